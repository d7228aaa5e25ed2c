//! roo-acme: clustered ACME (Let's Encrypt) for roo. Not built yet: this crate is a placeholder in
//! the workspace layout until the ACME work (issue 4) lands.
#![forbid(unsafe_code)]
