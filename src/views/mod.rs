//! What people read locally, from the poller's annotated flows: `flowtel snapshot`
//! ([`report`]), `flowtel top` ([`top`]) and the top-contributor ranking both use
//! ([`contributors`]). No view imports the sampler or the exporters.
pub mod contributors;
pub mod report;
pub mod top;
