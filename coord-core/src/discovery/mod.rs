//! Service discovery: registration kept alive by the backend, watched local
//! snapshots, balancers, circuit breakers and routing.

mod backend;
pub mod balancer;
pub mod breaker;
mod client;
mod endpoint;
mod health_check;
mod instance;
mod record;
mod registration;
mod retry_budget;
mod routing;
mod service_client;
#[cfg(feature = "tower")]
mod tower;
mod watcher;

#[cfg(feature = "tower")]
pub use self::tower::{TowerDiscover, discover, discover_from};
pub use backend::{
    MAX_REGISTRATION_TTL, MIN_REGISTRATION_TTL, RegistryBackend, RegistryChange, RegistryEvent,
    RegistryEvents, RegistryListing, RenewOutcome,
};
pub use client::{DEFAULT_REGISTRATION_TTL, DiscoveryClient};
pub use endpoint::{CallGuard, Endpoint};
pub use health_check::HealthCheck;
pub use instance::{
    InstanceStatus, MAX_INSTANCE_BYTES, MAX_INSTANCE_ID_LEN, MAX_SERVICE_NAME_LEN, MAX_WEIGHT,
    ServiceInstance, validate_instance_id, validate_service_name,
};
pub use record::{decode_record, encode_record};
pub use registration::{Registration, RegistrationEvent};
pub use retry_budget::RetryBudget;
pub use routing::{Canary, PickOptions};
pub use service_client::{CallError, ServiceClient, ServiceClientBuilder};
pub use watcher::{DiscoveryEvent, ServiceSnapshot, ServiceWatcher};
