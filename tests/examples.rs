//! The examples' own code: the small-batch demo (`small_batch_demo`) and
//! the burn-train Learner example (`learner`), built from `examples/experiment/`.
//!
//! A test binary of its own (not in `suite`): these tests check that a seed
//! reproduces a run, and a run's weights come from the backend's one global
//! generator, which every other test drawing weights in the same process
//! would advance in between (a CI run of the suite failed so). Here every
//! draw goes through `experiment::train::seeded`, under one lock.

#[path = "../examples/experiment/mod.rs"]
mod experiment;
#[path = "learner.rs"]
mod learner;
#[path = "small_batch_demo.rs"]
mod small_batch_demo;
