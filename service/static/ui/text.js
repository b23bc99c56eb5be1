// Plain-language lines for the toy result's bound checks and theorem hypotheses (rvsm/bounds.py, SPEC §6).
export const BOUNDS = {
  w_error_eq13: "The trained w ends close to the teacher w*: its distance is at most 4kβ·sin γ (ReLU), "
    + "or 4√(2π)β·sin γ / k (binary), where γ is the angle between w and its sparse copy u (eq. 13).",
  u_error_eq14: "The sparse u ends close to the teacher w*: the eq. 13 distance plus (λ/β)·√d. "
    + "Theorem 1 proves this for the ℓ1 penalty only (eq. 14).",
  limit_equation_eq12: "At the limit, w* minus a multiple of β(w − u) points along w: the limit equation "
    + "(eq. 12), with the constant C in the range the theorem allows.",
  theta_below_delta: "The final angle between w and the teacher w* is smaller than δ = π − θ(w⁰, w*): "
    + "the run did not drift towards the opposite direction.",
  fixed_point_identity: "At an exact fixed point of normalised RVSM both sides are equal; the residual says "
    + "how far the run stopped from one.",
  lagrangian_monotone: "The objective L_β never rose from one logged iteration to the next.",
  angle_monotone: "The angle θ(wᵗ, w*) to the teacher never rose from one logged iteration to the next.",
};

export const HYPOTHESES = {
  normalized_splitting_run: "The run is RVSM or RVSCGD with normalisation, the setting of the theorems.",
  population_gradient: "Gradients are the exact population (expected) gradients, not sampled ones.",
  delta_positive: "The start w⁰ is not opposite the teacher (δ = π − θ(w⁰, w*) > 0).",
  step_norm_le_half: "Every step moved w by at most 1/2 (|η∇f + ηβ(w − u)| ≤ 1/2).",
  eta_le_1_over_beta_plus_L: "The step size η is at most 1/(β + L), L the gradient's Lipschitz constant.",
  beta_le_delta_sin_delta_over_k_pi: "The coupling β is small: β ≤ δ·sin δ / (kπ).",
  lam_over_beta_lt_1_over_sqrt_d: "The threshold λ/β is below 1/√d, so w* survives thresholding.",
  eta_le_min_1_over_beta_plus_L_2sqrt2pi_over_k: "The step size η is at most min(1/(β + L), 2√(2π)/k).",
  beta_le_k_sin_delta_over_2sqrt2pi: "The coupling β is small: β ≤ k·sin δ / (2√(2π)).",
  lam_lt_k_over_2sqrt2pi_d: "The penalty λ is small: λ < k / (2√(2π)·d).",
  all: "All of the theorem's hypotheses hold for this run.",
};
