# Inputs of the rollout. `terraform.tfvars.example` fills them for the four hosts of topology.toml.

variable "topology" {
  description = <<-EOT
    Path of the cluster's topology.toml on the operator's machine. It is copied unchanged to every
    host (/etc/hf-mirror/topology.toml); its sha256 is part of every node's trigger, so editing it
    restarts every node, one at a time. Node names and their order come from its [[nodes]] tables
    (the `name` key of each), and the remote certificates directory from `[cluster] certs_dir`.
  EOT
  type        = string
}

variable "binary" {
  description = <<-EOT
    Path of the hf-mirror release binary (linux, the hosts' architecture) on the operator's machine.
    Its sha256 is the version: it names the release directory on each host
    (/opt/hf-mirror/releases/SHA256) and is checked on the host before anything is switched.
  EOT
  type        = string
}

variable "certs_dir" {
  description = <<-EOT
    Local directory made by `hf-mirror cluster certs --config TOPOLOGY --out DIR` before the first
    plan (filesha256 reads the files at plan time, so they must exist). Run it again after adding a
    node to topology.toml: it keeps the CA and every existing certificate and issues the new node's
    only (`--reissue NODE` replaces one node's). Each host gets ca.pem, its own NODE.pem and
    NODE.key, and the cluster's gossip.key (the same on every node) only; ca.key is never read by
    this configuration and never leaves the operator.
  EOT
  type        = string
}

variable "operator_token_file" {
  description = <<-EOT
    Local file holding the cluster's operator token (one line, at least 16 visible characters; e.g.
    `openssl rand -hex 32 > operator-token`, kept beside the certificates). Every node gets the same
    file as /etc/hf-mirror/operator-token (0640 root:hf-mirror) and serves its operator port with it:
    `hf-mirror status` on one node asks every member's operator port with one token. Terraform keeps
    only its sha256; changing it restarts every node, one at a time.
  EOT
  type        = string

  validation {
    condition     = fileexists(var.operator_token_file)
    error_message = "operator_token_file must name an existing file (make it once: openssl rand -hex 32 > FILE)."
  }
}

variable "nodes" {
  description = <<-EOT
    One entry per node of topology.toml, keyed by its node name. Every node of the topology must be
    here and every key must be a node of the topology.
      host         address Terraform reaches the host's SSH server at
      port         SSH port (22)
      user         SSH user: root, or a user with passwordless sudo (root)
      host_key     the host's SSH public key, "ssh-ed25519 AAAA..." (pinned: never trust on first use)
      data_dir     the node's data directory, mounted by the host's own fstab beforehand; never
                   formatted or emptied by the rollout (/var/lib/hf-mirror)
      http_listen  address of the HTTP port, held by the systemd socket unit across restarts
                   ("0.0.0.0:80"; "[::]:80" for both families)
      operator_listen  address of the operator port (`hf-mirror serve --operator-listen`: status,
                   drain, pins with the operator token; metrics and probes without) ("0.0.0.0:9090").
                   The other nodes' `hf-mirror status` and rollout steps reach it at the address the
                   node gossips from: firewall it to the operators', Prometheus' and the other
                   nodes' addresses
      dns_listen   when set, the DNS server's UDP and TCP sockets are held by systemd too (same
                   address as the topology's [dns] listen); when null the node binds them itself
      tls_cert     optional local PEM certificate chain for TLS on the HTTP port
      tls_key      its private key (both or neither); copied with mode 0640
      environment  extra HF_MIRROR_* settings for this node's unit (flags override topology.toml)
      bgp          with `anycast`: this host's BGP session to its upstream router
                   { neighbor, neighbor_as, local_as, router_id (default: host) }
  EOT
  type = map(object({
    host            = string
    port            = optional(number, 22)
    user            = optional(string, "root")
    host_key        = string
    data_dir        = optional(string, "/var/lib/hf-mirror")
    http_listen     = optional(string, "0.0.0.0:80")
    operator_listen = optional(string, "0.0.0.0:9090")
    dns_listen      = optional(string)
    tls_cert        = optional(string)
    tls_key         = optional(string)
    environment     = optional(map(string), {})
    bgp = optional(object({
      neighbor    = string
      neighbor_as = number
      local_as    = number
      router_id   = optional(string)
    }))
  }))

  # The topology's own shape (checked here: a validation of var.topology cannot read what is parsed
  # from it). length(var.nodes) >= 0 only ties each condition to this variable.
  validation {
    condition     = length(var.nodes) >= 0 && length(local.topology_nodes) >= 1 && length(local.topology_nodes) <= 8
    error_message = "topology.toml must have between 1 and 8 [[nodes]] tables (for more, add slots node_9 … to main.tf)."
  }
  validation {
    condition     = length(var.nodes) >= 0 && alltrue([for name in local.topology_nodes : can(regex("^[A-Za-z0-9-]+$", name))])
    error_message = "Every [[nodes]] table of topology.toml needs name = \"NAME\" (letters, digits and '-'); found: ${join(", ", local.topology_nodes)}."
  }
  validation {
    condition     = length(var.nodes) >= 0 && local.remote_certs_dir != ""
    error_message = "topology.toml needs [cluster] certs_dir = \"/path\": the nodes read ca.pem and their own certificate and key there."
  }
  validation {
    condition     = alltrue([for name in keys(var.nodes) : contains(local.topology_nodes, name)])
    error_message = "Every key of nodes must be a node of topology.toml (its nodes: ${join(", ", local.topology_nodes)})."
  }
  validation {
    condition     = alltrue([for name in local.topology_nodes : contains(keys(var.nodes), name)])
    error_message = "Every node of topology.toml needs an entry in nodes (a node without a host would never be live, and the rollout refuses to stop a node while another is not live)."
  }
  validation {
    condition     = alltrue([for node in values(var.nodes) : (node.tls_cert == null) == (node.tls_key == null)])
    error_message = "tls_cert and tls_key go together."
  }
}

variable "anycast" {
  description = <<-EOT
    Optional: every node announces the same service address over BGP (BIRD, Debian's bird2 on each
    host) while its /readyz answers 200, and withdraws it when it drains, stops or dies; the drain
    in ExecStop withdraws it explicitly and waits withdraw_delay seconds before the process stops.
    Each node then needs `bgp` in `nodes`. Null (the default) configures no BGP at all.
  EOT
  type = object({
    address        = string
    withdraw_delay = optional(number, 1)
  })
  default = null

  validation {
    condition     = var.anycast == null || alltrue([for node in values(var.nodes) : node.bgp != null])
    error_message = "With anycast, every node needs bgp = { neighbor, neighbor_as, local_as }."
  }
  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+\\.[0-9]+$", try(var.anycast.address, "0.0.0.0")))
    error_message = "anycast.address must be an IPv4 address (announced as /32)."
  }
}

variable "ssh_private_key_file" {
  description = "Local path of the SSH private key for the hosts (and the bastion). Only the path is kept in the state, never the key. Leave null to use the SSH agent."
  type        = string
  default     = null
}

variable "ssh_agent" {
  description = "Use the SSH agent (SSH_AUTH_SOCK) instead of, or besides, ssh_private_key_file."
  type        = bool
  default     = false
}

variable "bastion" {
  description = "Optional jump host every SSH connection goes through. host_key pins its key as for the nodes."
  type = object({
    host     = string
    port     = optional(number, 22)
    user     = optional(string, "root")
    host_key = string
  })
  default = null
}

variable "install_root" {
  description = "Where releases live on each host: INSTALL_ROOT/releases/SHA256/hf-mirror, with the links current and previous."
  type        = string
  default     = "/opt/hf-mirror"
}

variable "ready_timeout" {
  description = "Seconds a started node has to answer /readyz 200 before the step rolls it back (checked once a second)."
  type        = number
  default     = 180
}

variable "peers_timeout" {
  description = "Seconds the step waits for the other nodes to be live before stopping a node (it refuses after), and for the restarted node to be seen live and caught up with the catalog (it rolls back after)."
  type        = number
  default     = 180
}

variable "stop_timeout" {
  description = "systemd TimeoutStopSec of the node: the drain (which waits for fills in progress, up to 600 s) plus the 10 s grace of in-flight requests."
  type        = number
  default     = 660
}

variable "limit_nofile" {
  description = "LimitNOFILE of the node's unit (client connections, blob files, peer streams)."
  type        = number
  default     = 1048576
}
