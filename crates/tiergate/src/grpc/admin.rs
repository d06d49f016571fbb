//! The `tiergate.v1.Admin` gRPC service: the node's report, built by the same
//! [`DeviceReporter`] that answers HTTP `GET /v1/report`.

use std::sync::Arc;

use tiergate_api::wire::tier_to_pb;
use tiergate_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::device::DeviceReporter;

/// See the module documentation.
#[derive(Debug)]
pub struct AdminService {
    device: Arc<DeviceReporter>,
}

impl AdminService {
    pub fn new(device: Arc<DeviceReporter>) -> Self {
        AdminService { device }
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn report(
        &self,
        _request: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        let report = self.device.report();
        let report_json = serde_json::to_string(&report)
            .map_err(|err| Status::internal(format!("report: {err}")))?;
        Ok(Response::new(pb::ReportResponse {
            report_json,
            node: report.node.clone(),
            tier: tier_to_pb(report.tier).into(),
        }))
    }
}
