//! Training language models on Penn Treebank (issue 4): the data pipeline of
//! `../shared/docs/experiment.md` so far.

pub mod data;
