# The hf-mirror cluster of topology.toml on its hosts, one node at a time.
#
# Each node is one module instance (modules/node) holding one terraform_data; the instances are chained
# in topology order with depends_on, so a plan lists exactly the nodes that will restart and an apply
# restarts them one after the other, stopping at the first that fails. Terraform has no way to chain
# the instances of one for_each, so the chain is written out as numbered slots (node_1 … node_8): slot
# N holds the topology's N-th node, keyed by its name, e.g. module.node_2["ams1"].
#
# Adding and removing nodes: edit topology.toml and `nodes` together. The topology's sha256 is in every
# node's trigger, so every node restarts on the new file, one at a time in topology order; an added
# node's slot comes last in the chain (its first install runs after every other node knows it), and a
# removed node's resource is destroyed after the other nodes were restarted (Terraform orders the
# destruction of a create_before_destroy chain's dependents after the creations): its destroy-time
# step drains and stops it. The catalog follows topology.toml by itself (the new node joins as a
# learner and becomes a voter; the removed one leaves the voters once it is gone). Put new nodes at
# the end of topology.toml, never first (the first node bootstraps a new catalog): a node inserted
# in the middle moves every later node to another slot, which restarts them once more and is safe
# (see the slot check of the destroy-time step) but slower.

locals {
  topology_text   = replace(file(var.topology), "\r\n", "\n")
  topology_sha256 = filesha256(var.topology)

  # The [[nodes]] tables in file order: the text after each "[[nodes]]" header, up to the next table
  # header; each one's `name`. (Terraform has no TOML decoder; these keys are plain strings.)
  topology_parts = split("\n[[nodes]]", "\n${local.topology_text}")
  node_tables    = [for part in slice(local.topology_parts, 1, length(local.topology_parts)) : split("\n[", part)[0]]
  topology_nodes = [for table in local.node_tables : try(regex("(?m)^[ \\t]*name[ \\t]*=[ \\t]*\"([^\"]*)\"", table)[0], "")]

  # [cluster] certs_dir: where the nodes read their certificates; ports of [dns] and [rsync] listen.
  remote_certs_dir = try(regex("(?m)^[ \\t]*certs_dir[ \\t]*=[ \\t]*\"([^\"]+)\"", local.topology_text)[0], "")
  dns_port         = try(regex("(?s)\n\\[dns\\][^\\[]*?\n[ \\t]*listen[ \\t]*=[ \\t]*\"[^\"]*:([0-9]+)\"", local.topology_text)[0], "53")
  rsync_port       = try(regex("(?s)\n\\[rsync\\][^\\[]*?\n[ \\t]*listen[ \\t]*=[ \\t]*\"[^\"]*:([0-9]+)\"", local.topology_text)[0], "873")

  binary_sha256 = filesha256(var.binary)

  cluster = {
    nodes               = local.topology_nodes
    operator_token_file = abspath(pathexpand(var.operator_token_file))
    binary              = abspath(pathexpand(var.binary))
    binary_sha256       = local.binary_sha256
    topology            = abspath(var.topology)
    topology_sha256     = local.topology_sha256
    certs_dir           = abspath(pathexpand(var.certs_dir))
    remote_certs_dir    = local.remote_certs_dir
    install_root        = var.install_root
    ready_timeout       = var.ready_timeout
    peers_timeout       = var.peers_timeout
    stop_timeout        = var.stop_timeout
    limit_nofile        = var.limit_nofile
    dns_port            = local.dns_port
    rsync_port          = local.rsync_port
    anycast             = var.anycast
  }

  ssh = {
    private_key_file = var.ssh_private_key_file == null ? null : abspath(pathexpand(var.ssh_private_key_file))
    agent            = var.ssh_agent
    bastion          = var.bastion
  }

  # The nodes in topology order, with their settings; slot N takes element N-1.
  slots = [
    for name in local.topology_nodes : merge(var.nodes[name], { name = name }) if contains(keys(var.nodes), name)
  ]
}

module "node_1" {
  source   = "./modules/node"
  for_each = length(local.slots) >= 1 ? { (try(local.slots[0].name, "")) = try(local.slots[0], null) } : {}
  slot     = 1
  node     = each.value
  cluster  = local.cluster
  ssh      = local.ssh
}

module "node_2" {
  source   = "./modules/node"
  for_each = length(local.slots) >= 2 ? { (try(local.slots[1].name, "")) = try(local.slots[1], null) } : {}
  slot     = 2
  node     = each.value
  cluster  = local.cluster
  ssh      = local.ssh

  depends_on = [module.node_1]
}

module "node_3" {
  source   = "./modules/node"
  for_each = length(local.slots) >= 3 ? { (try(local.slots[2].name, "")) = try(local.slots[2], null) } : {}
  slot     = 3
  node     = each.value
  cluster  = local.cluster
  ssh      = local.ssh

  depends_on = [module.node_2]
}

module "node_4" {
  source   = "./modules/node"
  for_each = length(local.slots) >= 4 ? { (try(local.slots[3].name, "")) = try(local.slots[3], null) } : {}
  slot     = 4
  node     = each.value
  cluster  = local.cluster
  ssh      = local.ssh

  depends_on = [module.node_3]
}

module "node_5" {
  source   = "./modules/node"
  for_each = length(local.slots) >= 5 ? { (try(local.slots[4].name, "")) = try(local.slots[4], null) } : {}
  slot     = 5
  node     = each.value
  cluster  = local.cluster
  ssh      = local.ssh

  depends_on = [module.node_4]
}

module "node_6" {
  source   = "./modules/node"
  for_each = length(local.slots) >= 6 ? { (try(local.slots[5].name, "")) = try(local.slots[5], null) } : {}
  slot     = 6
  node     = each.value
  cluster  = local.cluster
  ssh      = local.ssh

  depends_on = [module.node_5]
}

module "node_7" {
  source   = "./modules/node"
  for_each = length(local.slots) >= 7 ? { (try(local.slots[6].name, "")) = try(local.slots[6], null) } : {}
  slot     = 7
  node     = each.value
  cluster  = local.cluster
  ssh      = local.ssh

  depends_on = [module.node_6]
}

module "node_8" {
  source   = "./modules/node"
  for_each = length(local.slots) >= 8 ? { (try(local.slots[7].name, "")) = try(local.slots[7], null) } : {}
  slot     = 8
  node     = each.value
  cluster  = local.cluster
  ssh      = local.ssh

  depends_on = [module.node_7]
}
