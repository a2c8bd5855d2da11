//! e2e tests live in e2e/.
