"""Distillation losses: KL on temperature-softened logits (x T^2) with CE, hidden-state and attention matching."""

from __future__ import annotations

from compress.core.errors import CompressError


def distillation_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float):
    """α · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − α) · CE(labels, s), KL averaged over the batch.

    T² keeps the KL gradients on the same scale as CE's when T changes (Hinton et al., 2015).
    Returns `(loss, {"kd": ..., "ce": ...})`; `labels` may be None only when alpha == 1.
    """
    import torch
    from torch.nn import functional as F

    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)  # (B, C)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    kd = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * temperature**2
    if alpha < 1:
        if labels is None:
            raise CompressError("alpha < 1 needs labels", "pass labelled data or alpha 1")
        ce = F.cross_entropy(student_logits, labels)
    else:
        ce = torch.zeros((), device=student_logits.device)
    return alpha * kd + (1 - alpha) * ce, {"kd": kd.detach(), "ce": ce.detach()}


def hidden_state_loss(student_hidden, teacher_hidden, attention_mask, projection=None):
    """Mean over mapped layers of the MSE between (projected) student and teacher token vectors, real tokens only.

    Args:
        student_hidden / teacher_hidden: lists of (B, T, H_s) / (B, T, H_t), one per mapped layer pair.
        attention_mask: (B, T), 1 on real tokens.
        projection: module mapping H_s -> H_t, or None when the widths match.
    """
    mask = attention_mask.unsqueeze(-1).float()  # (B, T, 1)
    total = 0.0
    for h_s, h_t in zip(student_hidden, teacher_hidden, strict=True):
        if projection is not None:
            h_s = projection(h_s)  # (B, T, H_s) -> (B, T, H_t)
        total = total + (((h_s.float() - h_t.float()) ** 2) * mask).sum() / (mask.sum() * h_t.shape[-1])
    return total / len(student_hidden)


def attention_loss(student_attn, teacher_attn, attention_mask):
    """Mean over mapped layers of the MSE between attention maps (B, heads, T, T) on real query rows; when head
    counts differ the maps are averaged over heads first."""
    rows = attention_mask[:, None, :, None].float()  # (B, 1, T, 1): padded queries do not count
    total = 0.0
    for a_s, a_t in zip(student_attn, teacher_attn, strict=True):
        if a_s.shape[1] != a_t.shape[1]:
            a_s, a_t = a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)
        diff = ((a_s.float() - a_t.float()) ** 2) * rows
        total = total + diff.sum() / (rows.sum() * a_s.shape[1] * a_s.shape[-1])
    return total / len(student_attn)
