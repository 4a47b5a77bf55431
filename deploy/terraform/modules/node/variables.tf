# One node of the cluster on its host. The root configuration fills these from topology.toml and
# the root variables; see ../../variables.tf for what each setting means to an operator.

variable "slot" {
  description = "The node's place in the topology's order (1 for the first node): the module slot node_N holding it. The host records it at each deploy, so that the destroy-time step of a slot the node has left (a node before it was removed) leaves the node running."
  type        = number
}

variable "node" {
  description = "This node: its name, its host and how to reach it over SSH, its data directory and sockets."
  type = object({
    name            = string
    host            = string
    port            = number
    user            = string
    host_key        = string
    data_dir        = string
    http_listen     = string
    operator_listen = string
    dns_listen      = optional(string)
    tls_cert        = optional(string)
    tls_key         = optional(string)
    environment     = map(string)
    bgp = optional(object({
      neighbor    = string
      neighbor_as = number
      local_as    = number
      router_id   = optional(string)
    }))
  })
}

variable "cluster" {
  description = "What every node shares: the release, the topology, the certificates and the other nodes."
  type = object({
    # every node of topology.toml, in its order
    nodes            = list(string)
    binary           = string
    binary_sha256    = string
    topology         = string
    topology_sha256  = string
    certs_dir        = string
    remote_certs_dir = string
    # local file with the cluster's operator token (one token for every node)
    operator_token_file = string
    install_root        = string
    ready_timeout       = number
    peers_timeout       = number
    stop_timeout        = number
    limit_nofile        = number
    # ports of the DNS server and the rsync daemon, for the outputs
    dns_port   = string
    rsync_port = string
    # the anycast address and how long a withdrawn node waits before it stops (null: no anycast)
    anycast = optional(object({
      address        = string
      withdraw_delay = number
    }))
  })
}

variable "ssh" {
  description = "How Terraform authenticates: a private key file (its path only is kept), the agent, and an optional bastion."
  type = object({
    private_key_file = optional(string)
    agent            = bool
    bastion = optional(object({
      host     = string
      port     = number
      user     = string
      host_key = string
    }))
  })
}
