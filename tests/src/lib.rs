//! keygate's end-to-end tests, which start the control plane, the KMS API server, the databases, the
//! worker in workerd and a GraphQL origin together, arrive with the control-plane and edge issues.
