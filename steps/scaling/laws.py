"""The published compute-optimal scaling laws, and where each puts the optimum for a budget.

Compute is counted the way both papers count it, C = 6 N D training FLOPs (forward 2 N D,
backward 4 N D), with N the parameters the law counts and D the training tokens.

- Kaplan et al. 2020, "Scaling Laws for Neural Language Models", Table 6: the compute-efficient
  frontier N_opt = 1.3e9 * C_min^0.73 parameters, with C_min in PF-days and N counting
  *non-embedding* parameters, and L(C_min) = (3.1e8 / C_min)^0.050 nats per token.
- Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models" (Chinchilla), approach 3:
  L(N, D) = E + A / N^alpha + B / D^beta with E = 1.69, A = 406.4, B = 410.7, alpha = 0.34,
  beta = 0.28; N counts *all* parameters.
- Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt": the same form refitted to
  the data of Hoffmann et al.'s figure 4: E = 1.82, A = 482.0, B = 2085.4, alpha = 0.348,
  beta = 0.366 (the published approach-3 values imply ~90 tokens per parameter, at odds with
  the paper's own approaches 1 and 2; the refit gives the ~20 that Chinchilla was trained with).

The losses are each paper's own (WebText2 and GPT-2's tokenizer for Kaplan, MassiveText for
Chinchilla): they predict nothing in nats on another corpus and tokenizer. The allocations are
what transfers, and even they are fits at scales far above a CPU run: a law fitted to runs on
your own corpus is the number to trust at small scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PF_DAY = 1e15 * 24 * 3600
"""FLOPs in a petaflop/s-day, Kaplan's unit of compute."""

ParamsKind = Literal["non-embedding", "total"]


@dataclass(frozen=True)
class Allocation:
    """Where a law puts the optimum for a compute budget."""

    law: str
    params: float
    """N_opt, counted as `params_kind` says."""
    tokens: float
    """D_opt, training tokens; C = 6 N D."""
    loss: float
    """The loss the law predicts at the optimum, in the paper's own nats per token."""
    params_kind: ParamsKind
    fitted_params: tuple[float, float]
    """The range of N the law was fitted on; outside it, the optimum is an extrapolation."""

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params

    @property
    def extrapolation(self) -> float:
        """How far N_opt lies outside the fitted range, as a factor (1.0 inside it)."""
        low, high = self.fitted_params
        return max(low / self.params, self.params / high, 1.0)


@dataclass(frozen=True)
class ParametricLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, eq. 2); N all parameters."""

    name: str
    E: float
    """Irreducible loss: the entropy of the text, in nats per token."""
    A: float
    B: float
    alpha: float
    """How fast loss falls with parameters."""
    beta: float
    """How fast loss falls with training tokens."""
    fitted_params: tuple[float, float] = (7e7, 1.6e10)
    """Smallest and largest N among the runs the law was fitted on (Hoffmann et al.: 70 M to over
    16 B parameters, 5 to 500 B tokens)."""
    params_kind: ParamsKind = "total"

    def loss(self, params: float, tokens: float) -> float:
        return self.E + self.A / params**self.alpha + self.B / tokens**self.beta

    @property
    def exponents(self) -> tuple[float, float]:
        """(a, b) of N_opt ∝ C^a, D_opt ∝ C^b: a = beta / (alpha + beta), b = alpha / (alpha + beta)."""
        total = self.alpha + self.beta
        return self.beta / total, self.alpha / total

    def optimum(self, flops: float) -> Allocation:
        """The N, D minimising L(N, D) under 6 N D = flops, in closed form (Hoffmann et al. eq. 4):
        N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b with G = (alpha A / (beta B))^(1 / (alpha + beta))."""
        a, b = self.exponents
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))
        params = g * (flops / 6.0) ** a
        tokens = (flops / 6.0) ** b / g
        return Allocation(self.name, params, tokens, self.loss(params, tokens), self.params_kind,
                          self.fitted_params)


@dataclass(frozen=True)
class KaplanLaw:
    """Kaplan et al. 2020's compute-efficient frontier (Table 6, section 6): N_opt = n_e * C^p_n and
    L = (c_c / C)^alpha_c with C in PF-days; N counts non-embedding parameters. D follows from
    C = 6 N D (the paper's own D_opt = 2e10 C^0.27 assumes its batch size schedule)."""

    name: str = "Kaplan 2020"
    n_e: float = 1.3e9
    p_n: float = 0.73
    c_c: float = 3.1e8
    """C_c^min, PF-days."""
    alpha_c: float = 0.050
    fitted_params: tuple[float, float] = (768.0, 1.5e9)
    """Smallest and largest non-embedding N of the paper's models."""
    params_kind: ParamsKind = "non-embedding"

    def optimum(self, flops: float) -> Allocation:
        pf_days = flops / PF_DAY
        params = self.n_e * pf_days**self.p_n
        tokens = flops / (6.0 * params)
        return Allocation(self.name, params, tokens, (self.c_c / pf_days) ** self.alpha_c, self.params_kind,
                          self.fitted_params)


KAPLAN = KaplanLaw()
CHINCHILLA = ParametricLaw("Chinchilla 2022 (approach 3)", E=1.69, A=406.4, B=410.7,
                           alpha=0.34, beta=0.28)
CHINCHILLA_REFIT = ParametricLaw("Chinchilla refit 2024", E=1.82, A=482.0, B=2085.4,
                                 alpha=0.348, beta=0.366)
PUBLISHED: tuple[KaplanLaw | ParametricLaw, ...] = (KAPLAN, CHINCHILLA, CHINCHILLA_REFIT)
"""The laws `gptpipe scaling plan` sets side by side, in the order it prints them."""
