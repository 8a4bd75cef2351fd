//! Cluster membership (SWIM gossip) and the control plane (Raft election and store).
//!
//! Nothing is implemented here yet: a single node is its own cluster until the cluster
//! issue lands. The crate exists so that the workspace has the shape DESIGN.md describes and
//! so that dependencies on it can be added without reshaping the tree.
