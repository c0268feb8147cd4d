//! The dom0 side of Resilire as a library: the hypervisor binding and the
//! pieces the `resilire-shim` commands are made of.

pub mod appliance;
pub mod checkpoint;
pub mod guard;
pub mod netbench;
pub mod output_commit;
pub mod probe;
pub mod progress;
pub mod protect;
pub mod restore_stream;
pub mod resume;
pub mod ship;
pub mod vmstate;
pub mod xen;
pub mod xenstore;
