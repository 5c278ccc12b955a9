"""Loss functions of Bi-IRRA that do not need the encoders (formulas: docs/design.md).

Distributed contrastive losses (ITC, SDM), two conventions (``model.gather_with_grad``):

* upstream (default): every process gathers the features of all processes and computes
  the loss over the whole global batch (rows and columns); the gather passes back only
  this process's slice of its own gradient (``all_gather_local_grad``). Every process
  logs the global loss, and after DDP averaging the update is the single-process one
  scaled by 1/world_size.
* ``gather_with_grad``: every process computes the rows of its *local* samples against
  the gathered columns, and the gather's backward sums the gradient over processes
  (``all_gather_with_grad``). After DDP averaging the update equals that of one process
  computing the mean over the concatenated batch, whatever the number of processes.

With one process both are the same loss.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from utils.distributed import all_gather_local_grad, all_gather_no_grad, all_gather_with_grad, get_world_size

NEGATIVE_SMOOTHING = 1e-5  # upstream adds it to the hard-negative weights before masking positives


class Contrast(NamedTuple):
    """Rows and columns of the contrastive matrices, with the person id of each."""
    image_rows: torch.Tensor
    text_rows: torch.Tensor
    pid_rows: torch.Tensor
    image_cols: torch.Tensor
    text_cols: torch.Tensor
    pid_cols: torch.Tensor


def contrast_sets(image_feat: torch.Tensor, text_feat: torch.Tensor, pids: torch.Tensor, use_gather: bool,
                  gather_with_grad: bool = False) -> Contrast:
    """The rows and columns one process uses under the chosen gather convention (see module doc)."""
    if not use_gather or get_world_size() == 1:
        return Contrast(image_feat, text_feat, pids, image_feat, text_feat, pids)
    pids_all = all_gather_no_grad(pids)
    if gather_with_grad:
        return Contrast(image_feat, text_feat, pids, all_gather_with_grad(image_feat),
                        all_gather_with_grad(text_feat), pids_all)
    image_all, text_all = all_gather_local_grad(image_feat), all_gather_local_grad(text_feat)
    return Contrast(image_all, text_all, pids_all, image_all, text_all, pids_all)


def identity_targets(pids: torch.Tensor, pids_all: torch.Tensor) -> torch.Tensor:
    """Row-normalised same-person matrix [rows, columns]."""
    same = (pids[:, None] == pids_all[None, :]).float()
    return same / same.sum(dim=1, keepdim=True)


def itc_loss(image_feat: torch.Tensor, text_feat: torch.Tensor, pids: torch.Tensor, temp: torch.Tensor,
             use_gather: bool = True, gather_with_grad: bool = False) -> torch.Tensor:
    """Identity-aware ITC: mean of the image->text and text->image soft cross-entropies.

    Features are L2-normalised [B, E]; a text and an image of the same person are both
    positives (soft labels = same-person matrix, rows normalised).
    """
    c = contrast_sets(image_feat, text_feat, pids, use_gather, gather_with_grad)
    targets = identity_targets(c.pid_rows, c.pid_cols)
    logits_i2t = c.image_rows @ c.text_cols.t() / temp
    logits_t2i = c.text_rows @ c.image_cols.t() / temp
    loss_i2t = -(targets * F.log_softmax(logits_i2t.float(), dim=1)).sum(dim=1).mean()
    loss_t2i = -(targets * F.log_softmax(logits_t2i.float(), dim=1)).sum(dim=1).mean()
    return 0.5 * (loss_i2t + loss_t2i)


def sdm_loss(image_feat: torch.Tensor, text_feat: torch.Tensor, pids: torch.Tensor, temp: torch.Tensor,
             use_gather: bool = True, gather_with_grad: bool = False, eps: float = 1e-8) -> torch.Tensor:
    """IRRA's similarity distribution matching: KL(softmax(sim / temp) || normalised identity labels).

    Sum of the image->text and text->image KL divergences, each a mean over rows.
    """
    c = contrast_sets(image_feat, text_feat, pids, use_gather, gather_with_grad)
    targets = identity_targets(c.pid_rows, c.pid_cols)
    loss = image_feat.new_zeros((), dtype=torch.float32)
    for logits in (c.image_rows @ c.text_cols.t() / temp, c.text_rows @ c.image_cols.t() / temp):
        pred = F.softmax(logits.float(), dim=1)
        kl = pred * (F.log_softmax(logits.float(), dim=1) - torch.log(targets + eps))
        loss = loss + kl.sum(dim=1).mean()
    return loss


@torch.no_grad()
def sample_negatives(sim: torch.Tensor, pids_row: torch.Tensor, pids_col: torch.Tensor,
                     temp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard negatives: for each row one column of another person, drawn as upstream weighs them.

    Weights = softmax(sim / temp) over all columns + 1e-5, then same-person columns set
    to 0 (upstream's ``get_hard_negatives``). Rows for which every column is the same
    person (e.g. a local batch of one identity; upstream's multinomial fails there) get
    no negative: they are left out and reported by the returned ``valid`` mask, so a
    same-person pair is never labelled a non-match. Returns (column index [R] for the
    valid rows, valid [B] bool).
    """
    other = pids_row[:, None] != pids_col[None, :]
    valid = other.any(dim=1)
    weights = (F.softmax(sim.float() / temp.float(), dim=1) + NEGATIVE_SMOOTHING) * other
    if not bool(valid.any()):
        return torch.zeros(0, dtype=torch.long, device=sim.device), valid
    return torch.multinomial(weights[valid], 1).squeeze(1), valid


def cosine_distill_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over all positions of 1 - cosine(student, teacher)."""
    return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def masked_token_ce(logits: torch.Tensor, labels: torch.Tensor, mean_count: float | None = None) -> torch.Tensor:
    """Cross-entropy summed over labelled tokens, divided by the mean count per process.

    Processes hold different numbers of masked tokens; dividing by the mean count (not
    the local one) makes the DDP-averaged loss and gradient equal the token mean over the
    global batch, whatever the number of processes. ``mean_count`` is given when the
    caller knows it (virtual processes); otherwise it is all-reduced here. 0 (still in
    the graph) when nothing is labelled.
    """
    if mean_count is None:
        count = torch.tensor(float(labels.numel()), device=logits.device)
        if get_world_size() > 1:
            torch.distributed.all_reduce(count)
            count = count / get_world_size()
        mean_count = float(count)
    return F.cross_entropy(logits.float(), labels, reduction="sum") / max(mean_count, 1.0)


__all__ = ["itc_loss", "sdm_loss", "sample_negatives", "cosine_distill_loss", "masked_token_ce",
           "identity_targets", "contrast_sets", "Contrast", "NEGATIVE_SMOOTHING"]
