//! Load balancers: pick one endpoint of a set, without touching the network.
