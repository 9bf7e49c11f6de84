"""Named metric conventions: the places where published neural-collapse code disagrees.

Each knob changes a definite formula; every named preset is our reading of the
cited paper or code. ``Convention`` is frozen, so a custom one is
``dataclasses.replace(CONVENTIONS["zhu2021"], bias_sign=+1)``.

=====================  ==========  ============  =========  ==========
knob                   papyan2020  papyan_colab  zhu2021    rhubarbwu
=====================  ==========  ============  =========  ==========
global_mean            samples     samples       samples    classes
nc1_divide_by_classes  yes         yes           yes        yes
std_ddof               0           1             0          1
cdnv_ddof              0           1             0          0
center_weights         no          no            no         no
bias_sign (Wμ_G ± b)   +           +             −          +
ncc_use_bias           yes         yes           yes        no
=====================  ==========  ============  =========  ==========

- ``global_mean``: ``"samples"`` is the sample-weighted mean of all features
  (Papyan et al. 2020; the M-D code); ``"classes"`` is the unweighted mean of the
  class means (rhubarbwu/neural-collapse). They differ when classes are
  imbalanced, which label noise makes them.
- ``std_ddof``: the degrees of freedom of the standard deviations in the
  equinorm coefficient of variation (``nc2_equinorm_*``), the cosine spread
  (``nc2_cos_std_*``) and the pooled ``memorization_std`` / ``dilation_std``
  (numpy's default 0 vs torch's default 1, which the Colab notebook and rhubarbwu
  inherit).
- ``cdnv_ddof``: the per-class variances in CDNV are
  ``σ_c² = Σ_{i∈c} ‖h_i − μ_c‖² / (n_c − cdnv_ddof)``. rhubarbwu/neural-collapse divides
  by n_c (``VarNormAccumulator`` totals over counts), so its preset has 0; the Colab
  preset keeps torch's unbiased 1.
- Always ddof 0, whatever the convention: ``dilation_std_official`` (``np.std`` per
  class in the official M-D code), ``nc2_equiangular_*`` (a mean, no ddof), ECE.
- ``center_weights``: compute NC2 Gram errors of ``W`` after subtracting the mean
  classifier row.
- ``bias_sign``: NC4's bias term ``‖W μ_G + s·b‖`` with ``s = ±1`` (the official M-D
  code prints ``‖W μ_G − b‖``).
- ``ncc_use_bias``: whether the classifier decision compared with the
  nearest-class-centre rule includes the bias (Papyan: yes; rhubarbwu: agreement
  of ``argmax W h`` without bias).

``zhu2021`` is the official M-D code's set-up with one fix: class means use the
actual class counts, not hard-coded clean counts.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Convention:
    name: str
    global_mean: Literal["samples", "classes"] = "samples"
    nc1_divide_by_classes: bool = True
    std_ddof: int = 0
    cdnv_ddof: int = 0
    center_weights: bool = False
    bias_sign: int = 1
    ncc_use_bias: bool = True

    def __post_init__(self) -> None:
        if self.global_mean not in ("samples", "classes"):
            raise ValueError(f"global_mean must be 'samples' or 'classes'; got {self.global_mean!r}")
        for knob in ("std_ddof", "cdnv_ddof"):
            if getattr(self, knob) not in (0, 1):
                raise ValueError(f"{knob} must be 0 or 1; got {getattr(self, knob)}")
        if self.bias_sign not in (-1, 1):
            raise ValueError(f"bias_sign must be +1 or -1; got {self.bias_sign}")


CONVENTIONS: dict[str, Convention] = {
    "papyan2020": Convention("papyan2020"),
    "papyan_colab": Convention("papyan_colab", std_ddof=1, cdnv_ddof=1),
    "zhu2021": Convention("zhu2021", bias_sign=-1),
    "rhubarbwu": Convention("rhubarbwu", global_mean="classes", std_ddof=1, ncc_use_bias=False),
}

DEFAULT_CONVENTION = "zhu2021"


def get_convention(convention: str | Convention) -> Convention:
    """A ``Convention`` from a name or pass one through; unknown names list the valid ones."""
    if isinstance(convention, Convention):
        return convention
    if convention in CONVENTIONS:
        return CONVENTIONS[convention]
    hint = difflib.get_close_matches(str(convention), list(CONVENTIONS), n=1)
    msg = f"unknown convention {convention!r}; valid: {', '.join(CONVENTIONS)}"
    raise ValueError(msg + (f" (did you mean {hint[0]!r}?)" if hint else ""))
