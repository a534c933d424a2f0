//! One file per subcommand: its flags and what it does.

pub(crate) mod bench;
pub(crate) mod calibrate;
pub(crate) mod check_numerics;
pub(crate) mod eval;
pub(crate) mod export;
pub(crate) mod info;
pub(crate) mod predict;
pub(crate) mod profile;
pub(crate) mod select;
pub(crate) mod train;
pub(crate) mod verify;
