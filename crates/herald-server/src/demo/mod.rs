//! `herald demo`: the demo apps of `examples/demos` (chat, live dashboard,
//! live event, collaborative editor, fleet tracking), served by a node that
//! runs the demos' own config.
//!
//! - [`site`]: the pages, the browser libraries from the demos' npm
//!   install (no CDN), and a sign-in that mints connection tokens for any
//!   name (a demo has no passwords; the node listens on 127.0.0.1 unless
//!   told otherwise).
//! - [`feeds`]: the simulated sources two demos show (service metrics and
//!   delivery vans), published through the node's own server API, as an
//!   application's backend would publish them.

pub(crate) mod feeds;
pub(crate) mod site;
