//! The JSON Lines event dump: schema, streaming writer and streaming reader.
pub mod fast;
pub mod node;
pub mod reader;
pub mod schema;
pub mod writer;

pub use node::*;
pub use reader::{DumpError, DumpReader};
pub use schema::*;
pub use writer::DumpWriter;
