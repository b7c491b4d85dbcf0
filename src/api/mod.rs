pub mod convert;
pub mod proto;
pub mod services;
