//! The dom0 side of Resilire as a library: the hypervisor binding and the
//! pieces the `resilire-shim` commands are made of.

pub mod xen;
pub mod xenstore;
pub mod appliance;
pub mod checkpoint;
pub mod vmstate;
pub mod restore_stream;
pub mod ship;
pub mod netbench;
pub mod protect;
pub mod resume;
pub mod guard;
pub mod probe;
pub mod output_commit;
pub mod progress;
