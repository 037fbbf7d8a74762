//! Service discovery: registration kept alive by the backend, watched local
//! snapshots, balancers, circuit breakers and routing.

pub mod balancer;
mod breaker;
mod endpoint;
mod instance;

pub use endpoint::{CallGuard, Endpoint};
pub use instance::{
    InstanceStatus, MAX_INSTANCE_BYTES, MAX_INSTANCE_ID_LEN, MAX_SERVICE_NAME_LEN, MAX_WEIGHT,
    ServiceInstance, validate_instance_id, validate_service_name,
};
