//! The `custody` client as an operator uses it: output to stdout, evidence
//! directories, progress while watching, chunk sizes the server accepts.
