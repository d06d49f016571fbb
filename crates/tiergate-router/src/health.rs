//! Link health of one upstream endpoint.
