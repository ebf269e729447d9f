//! Workers on several hosts (network namespaces), no shared disk.
