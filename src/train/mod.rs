//! Training language models on Penn Treebank (issue 4): the data pipeline, the
//! optimiser and checkpoints of `../shared/docs/experiment.md` so far.

pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod fault;
pub mod fetch;
pub mod gpu;
pub mod model;
pub mod optim;
pub mod run;
pub mod rundir;
