//! media-tools: what operators and tests run against media nodes, and a node never
//! does. The node's library (`media-node`) exports only the node; everything here
//! drives one from outside, as a caller, an agent or an operator would.
//!
//! - `caller`: an RTP caller over real UDP (PCMU/PCMA speech out, what comes back timed).
//! - `analysis`: synthetic speech and prompts, RMS and correlation, to tell what was heard.
//! - `demo`: the README's demo call, against an in-process node or a running one.
//! - `load`: N concurrent calls against a media node or rtpengine, measured side by side.
//! - `ng`: the rtpengine ng protocol (bencode over UDP) and the SDP it needs.
//! - `http`, `prometheus`: a node's /metrics and health read without a client library.
//! - `wav`: WAV files with headers that lie, as a hostile caller sends them.
//! - `files`: what a node left on disk, found from outside.
pub mod analysis;
pub mod caller;
pub mod demo;
pub mod files;
pub mod http;
pub mod load;
pub mod ng;
pub mod prometheus;
pub mod wav;
