locals {
  deployed = merge(
    { for name, node in module.node_1 : name => node.summary },
    { for name, node in module.node_2 : name => node.summary },
    { for name, node in module.node_3 : name => node.summary },
    { for name, node in module.node_4 : name => node.summary },
    { for name, node in module.node_5 : name => node.summary },
    { for name, node in module.node_6 : name => node.summary },
    { for name, node in module.node_7 : name => node.summary },
    { for name, node in module.node_8 : name => node.summary },
  )
}

output "nodes" {
  description = "Per node (by name): host, the sha256 of the release deployed, data directory, and its HTTP, operator, DNS and rsync endpoints."
  value       = local.deployed
}

output "order" {
  description = "The order nodes are deployed in (topology order); `terraform destroy` goes the other way."
  value       = local.topology_nodes
}

output "release_sha256" {
  description = "The sha256 of the binary this configuration deploys."
  value       = local.binary_sha256
}

output "anycast_address" {
  description = "The service address every ready node announces over BGP (null without anycast)."
  value       = try(var.anycast.address, null)
}
