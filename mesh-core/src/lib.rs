//! Identity, CA and trust primitives for the mesh.
