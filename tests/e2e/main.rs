//! Custody's end-to-end tests, in one binary so the RocksDB stack is linked
//! once: real `custodyd` processes, the real `custody` client, real TLS,
//! ffmpeg-made segments, real store directories and network namespaces.
//! Each module is one area; `testkit` holds the shared helpers.

mod testkit;

mod audit;
mod authz;
mod cli;
mod cluster;
mod cluster_retention;
mod compliance;
mod crash;
mod evidence;
mod foundation;
mod full_disk;
mod listeners;
mod metrics;
mod netns;
mod playback;
mod progress;
mod python_client;
mod retention;
mod s3;
mod seaweed;
mod store_truth;
