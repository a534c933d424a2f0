//! Training of switchable-precision models: data pipelines, the individual / joint / direct /
//! progressive strategies, and checkpoints.
//!
//! Not implemented yet: this crate is an empty placeholder in the workspace until training
//! lands. It builds on [`adabits_models`].

pub use adabits_models;
