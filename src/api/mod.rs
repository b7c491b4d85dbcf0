pub mod admission;
pub mod convert;
pub mod identity;
pub mod proto;
pub mod services;
