//! Per-core timer wheels, exponential delay and Poisson emission samplers, and the constant-rate emission scheduler (Algorithm 2 of the paper): pure code with time and randomness passed in. Filled by the scheduler issue.

#![forbid(unsafe_code)]
