//! The JSON Lines event dump: schema, streaming writer and streaming reader.
pub mod reader;
pub mod schema;
pub mod writer;

pub use reader::{DumpError, DumpReader};
pub use schema::*;
pub use writer::DumpWriter;
