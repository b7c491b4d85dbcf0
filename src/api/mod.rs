pub mod admission;
pub mod convert;
pub mod forward;
pub mod identity;
pub mod proto;
pub mod services;
