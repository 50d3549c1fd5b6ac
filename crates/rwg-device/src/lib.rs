//! OS I/O for rwg on Linux: the TUN device, the UDP sockets, the configuration socket (UAPI)
//! and the daemon that ties them to the protocol core.

mod sys;
pub mod tun;
pub mod udp;
