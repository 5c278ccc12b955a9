"""Loss functions of Bi-IRRA (SPEC §4) that do not need the encoders.

Distributed convention for the contrastive losses (ITC, SDM): every process computes
the rows of its *local* samples against the columns of the samples *gathered* from all
processes (``all_gather_with_grad``, whose backward sums the gradient over processes)
and takes the mean over its local rows. DDP averages the parameter gradients over the P
processes, so the update equals that of one process computing the mean over all P*B rows
of the concatenated batch, and the mean of the per-process loss values equals that
single-process loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.distributed import all_gather_no_grad, all_gather_with_grad, get_world_size


def gather_for_contrast(image_feat: torch.Tensor, text_feat: torch.Tensor, pids: torch.Tensor,
                        use_gather: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Columns of the contrastive matrices: features and person ids of every process."""
    if not use_gather:
        return image_feat, text_feat, pids
    return all_gather_with_grad(image_feat), all_gather_with_grad(text_feat), all_gather_no_grad(pids)


def identity_targets(pids: torch.Tensor, pids_all: torch.Tensor) -> torch.Tensor:
    """Row-normalised same-person matrix [B_local, B_all]."""
    same = (pids[:, None] == pids_all[None, :]).float()
    return same / same.sum(dim=1, keepdim=True)


def itc_loss(image_feat: torch.Tensor, text_feat: torch.Tensor, pids: torch.Tensor, temp: torch.Tensor,
             use_gather: bool = True) -> torch.Tensor:
    """Identity-aware ITC: mean of the image->text and text->image soft cross-entropies.

    Features are L2-normalised [B, E]; a text and an image of the same person are both
    positives (soft labels = same-person matrix, rows normalised).
    """
    image_all, text_all, pids_all = gather_for_contrast(image_feat, text_feat, pids, use_gather)
    targets = identity_targets(pids, pids_all)
    logits_i2t = image_feat @ text_all.t() / temp
    logits_t2i = text_feat @ image_all.t() / temp
    loss_i2t = -(targets * F.log_softmax(logits_i2t.float(), dim=1)).sum(dim=1).mean()
    loss_t2i = -(targets * F.log_softmax(logits_t2i.float(), dim=1)).sum(dim=1).mean()
    return 0.5 * (loss_i2t + loss_t2i)


def sdm_loss(image_feat: torch.Tensor, text_feat: torch.Tensor, pids: torch.Tensor, temp: torch.Tensor,
             use_gather: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """IRRA's similarity distribution matching: KL(softmax(sim / temp) || normalised identity labels).

    Sum of the image->text and text->image KL divergences, each a mean over local rows.
    """
    image_all, text_all, pids_all = gather_for_contrast(image_feat, text_feat, pids, use_gather)
    targets = identity_targets(pids, pids_all)
    loss = image_feat.new_zeros((), dtype=torch.float32)
    for logits in (image_feat @ text_all.t() / temp, text_feat @ image_all.t() / temp):
        pred = F.softmax(logits.float(), dim=1)
        kl = pred * (F.log_softmax(logits.float(), dim=1) - torch.log(targets + eps))
        loss = loss + kl.sum(dim=1).mean()
    return loss


@torch.no_grad()
def sample_negatives(sim: torch.Tensor, pids_row: torch.Tensor, pids_col: torch.Tensor,
                     temp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard negatives: for each row one column drawn from softmax(sim / temp) over other persons.

    Same-person columns have zero probability. Rows for which every column is the same
    person (e.g. a local batch of one identity) get no negative: they are left out and
    reported by the returned ``valid`` mask, so a same-person pair is never labelled a
    non-match. Returns (column index [R] for the valid rows, valid [B] bool).
    """
    other = pids_row[:, None] != pids_col[None, :]
    valid = other.any(dim=1)
    logits = (sim.float() / temp.float()).masked_fill(~other, float("-inf"))[valid]
    if logits.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=sim.device), valid
    probs = F.softmax(logits, dim=1)
    return torch.multinomial(probs, 1).squeeze(1), valid


def cosine_distill_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over all positions of 1 - cosine(student, teacher)."""
    return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def masked_token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over labelled tokens, divided by the mean count per process.

    Processes hold different numbers of masked tokens; dividing by the mean count (not
    the local one) makes the DDP-averaged loss and gradient equal the token mean over the
    global batch, whatever the number of processes. 0 (still in the graph) when nothing
    is labelled.
    """
    count = torch.tensor(float(labels.numel()), device=logits.device)
    if get_world_size() > 1:
        torch.distributed.all_reduce(count)
        count = count / get_world_size()
    return F.cross_entropy(logits.float(), labels, reduction="sum") / count.clamp(min=1.0)


__all__ = ["itc_loss", "sdm_loss", "sample_negatives", "cosine_distill_loss", "masked_token_ce",
           "identity_targets", "gather_for_contrast"]
