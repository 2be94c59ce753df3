//! A local stand-in for "a Kubernetes cluster with Higress installed", for tests and demos.
//!
//! This is a test double, not a Kubernetes distribution. It has three parts, each usable alone:
//! - [`api`]: a fake Kubernetes API server on loopback that speaks the wire protocol kube's
//!   real HTTP client and `kubectl` rely on (lists, watches, patches, server-side apply,
//!   status subresources, CRDs, garbage collection);
//! - [`sim`]: a workload simulator that plays kube-controller-manager and kubelet
//!   (Deployments → ReplicaSets → Pods, where every ready Pod is a real HTTP server);
//! - [`gateway`]: a bridge that watches the API like Higress does and drives a real Envoy
//!   through file-based xDS, with WasmPlugins delivered by ECDS;
//! - [`prometheus`]: a real Prometheus scraping the gateway's Envoy, for the controller's
//!   metric analysis.
//!
//! The controller under test must never know it is not talking to a real cluster: everything
//! it sees arrives over HTTP through `kube::Client`. Nothing here may depend on the
//! controller crate.

pub mod api;
pub mod cluster;
pub mod gateway;
mod process;
pub mod prometheus;
pub mod sim;
