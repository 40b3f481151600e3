# NixOS module: services.lancache, a LAN-first peer cache for Nix.
#
#   imports = [ lancache.nixosModules.default ];
#   services.lancache = { enable = true; openFirewall = true; };
#
# The daemon runs as the system user `lancache` with a read-only view of the
# Nix store and its database; Nix gets the local endpoint as a substituter
# that is tried before cache.nixos.org. See packaging/README.md.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption mkIf mkMerge mkDefault mkBefore types;
  common = import ../nix/common.nix { inherit lib; };
  cfg = config.services.lancache;
  stateDir = common.defaultStateDir;
  customCacheDir = cfg.appliance.enable && cfg.appliance.cacheDir != common.defaultCacheDir;

  execStart = builtins.concatStringsSep " " (
    [ "${cfg.package}/bin/lancache" "serve" ]
    ++ map common.escapeSystemdExecArg (common.serveArgs { inherit cfg stateDir; })
    # %d is the service's credentials directory (systemd >= 248).
    ++ (if cfg.fleetKeyFile == null then [ ] else [ "--fleet-key" "%d/fleet-key" ]));
in
{
  options.services.lancache = common.options { inherit config pkgs cfg; } // {
    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Open the firewall: the QUIC port (UDP), mDNS (UDP 5353) when `mdns` is on,
        and the HTTP port (TCP) only when `listenAddress` is not loopback.
      '';
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = common.assertions cfg;

      users.users.lancache = {
        isSystemUser = true;
        group = "lancache";
        home = stateDir;
        description = "lancache daemon";
      };
      users.groups.lancache = { };

      # `lancache status` for the admin.
      environment.systemPackages = [ cfg.package ];

      # quic-go asks for 7 MiB UDP socket buffers; stock kernels allow 208 KiB.
      boot.kernel.sysctl = {
        "net.core.rmem_max" = mkDefault 7500000;
        "net.core.wmem_max" = mkDefault 7500000;
      };

      systemd.services.lancache = {
        description = "lancache, a LAN-first peer cache for Nix";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        after = [ "network-online.target" "nix-daemon.service" ];
        serviceConfig = {
          Type = "simple";
          ExecStart = execStart;
          Restart = "on-failure";
          RestartSec = 5;
          User = "lancache";
          Group = "lancache";
          StateDirectory = "lancache";
          StateDirectoryMode = "0700";
          CacheDirectory = "lancache";
          CacheDirectoryMode = "0750";
          WorkingDirectory = stateDir;
          UMask = "0077";
          LimitNOFILE = 65536;
          # The fleet key is copied by systemd into a private directory readable
          # by this service only; it never enters the Nix store.
          LoadCredential = lib.optional (cfg.fleetKeyFile != null) "fleet-key:${cfg.fleetKeyFile}";

          # The store and its database are only read; ProtectSystem=strict
          # already makes them read-only, this says so explicitly.
          ReadOnlyPaths = [ "-/nix/store" "-/nix/var/nix/db" ];
          # The daemon socket would let the service build as a Nix user.
          InaccessiblePaths = [ "-/nix/var/nix/daemon-socket" ];
          ReadWritePaths = lib.optional customCacheDir cfg.appliance.cacheDir;

          NoNewPrivileges = true;
          CapabilityBoundingSet = "";
          AmbientCapabilities = "";
          ProtectSystem = "strict";
          ProtectHome = true;
          PrivateTmp = true;
          PrivateDevices = true;
          DevicePolicy = "closed";
          ProtectKernelTunables = true;
          ProtectKernelModules = true;
          ProtectKernelLogs = true;
          ProtectControlGroups = true;
          ProtectClock = true;
          ProtectHostname = true;
          ProtectProc = "invisible";
          ProcSubset = "pid";
          RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_NETLINK" "AF_UNIX" ];
          RestrictNamespaces = true;
          RestrictRealtime = true;
          RestrictSUIDSGID = true;
          LockPersonality = true;
          MemoryDenyWriteExecute = true;
          RemoveIPC = true;
          SystemCallArchitectures = "native";
          SystemCallFilter = [ "@system-service" "~@privileged" ];
          SystemCallErrorNumber = "EPERM";
        };
      };
    }

    (mkIf customCacheDir {
      systemd.tmpfiles.rules = [ "d ${cfg.appliance.cacheDir} 0750 lancache lancache - -" ];
    })

    (mkIf cfg.substituter.enable {
      # Tried before cache.nixos.org by priority (nix-cache-info says 30; the
      # public cache is 40). mkBefore only orders the list for readability.
      nix.settings.substituters = mkBefore [ (common.substituterURL cfg) ];
    })

    (mkIf (cfg.narinfoCacheNegativeTTL != null) {
      nix.settings.narinfo-cache-negative-ttl = cfg.narinfoCacheNegativeTTL;
    })

    (mkIf cfg.openFirewall {
      networking.firewall.allowedUDPPorts = [ (common.portOf cfg.quicAddress) ] ++ lib.optional cfg.mdns 5353;
      networking.firewall.allowedTCPPorts = lib.optional (!common.isLoopback cfg.listenAddress) (common.portOf cfg.listenAddress);
    })
  ]);
}
