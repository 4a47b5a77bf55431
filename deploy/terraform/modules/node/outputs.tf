output "name" {
  description = "The node's name in topology.toml."
  value       = terraform_data.node.output.name
}

output "summary" {
  description = "The node's host, deployed release and endpoints (as reached at the SSH host address; operator: the operator port, with the operator token)."
  value = {
    host     = terraform_data.node.output.host
    sha256   = terraform_data.node.output.sha256
    data_dir = terraform_data.node.output.data_dir
    http     = "http://${local.endpoint_host}:${local.http_port}"
    operator = "http://${local.endpoint_host}:${local.operator_port}"
    dns      = "${local.endpoint_host}:${var.cluster.dns_port}"
    rsync    = "rsync://${local.endpoint_host}:${var.cluster.rsync_port}/"
  }
}
