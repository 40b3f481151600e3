# nix-darwin module: services.lancache as a launchd daemon.
#
#   imports = [ lancache.darwinModules.default ];
#   services.lancache.enable = true;
#
# The daemon runs as the hidden system user `_lancache` (created by
# nix-darwin: pick a free `uid`/`gid` if the defaults are taken), logs to
# /var/log/lancache.log, and Nix gets the local endpoint as a substituter.
# macOS raises UDP buffers on demand (kern.ipc.maxsockbuf is 8 MiB), so no
# sysctl is needed; the application firewall, if on, asks once for lancache.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption mkIf mkMerge mkBefore mkAfter types;
  common = import ../nix/common.nix { inherit lib; };
  cfg = config.services.lancache;
  stateDir = common.defaultStateDir;
in
{
  options.services.lancache = common.options { inherit config pkgs cfg; } // {
    user = mkOption {
      type = types.str;
      default = "_lancache";
      description = "User the daemon runs as; created by this module.";
    };
    group = mkOption {
      type = types.str;
      default = "_lancache";
      description = "Group of the daemon's user; created by this module.";
    };
    uid = mkOption {
      type = types.int;
      default = 431;
      description = "UID of the daemon's user (must be free; macOS system users are below 500).";
    };
    gid = mkOption {
      type = types.int;
      default = 431;
      description = "GID of the daemon's group (must be free).";
    };
    logFile = mkOption {
      type = types.str;
      default = "/var/log/lancache.log";
      description = "Where launchd writes the daemon's output.";
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = common.assertions cfg;

      users.knownUsers = [ cfg.user ];
      users.knownGroups = [ cfg.group ];
      users.users.${cfg.user} = {
        uid = cfg.uid;
        gid = cfg.gid;
        home = stateDir;
        isHidden = true;
        description = "lancache daemon";
      };
      users.groups.${cfg.group} = {
        gid = cfg.gid;
        description = "lancache daemon";
      };

      environment.systemPackages = [ cfg.package ];

      # launchd has no StateDirectory=: make the directories (and the log,
      # which launchd opens as the job's user) before the daemon is loaded.
      system.activationScripts.postActivation.text = mkAfter ''
        install -d -m 0700 -o ${cfg.user} -g ${cfg.group} ${stateDir}
        ${lib.optionalString cfg.appliance.enable "install -d -m 0750 -o ${cfg.user} -g ${cfg.group} ${cfg.appliance.cacheDir}"}
        touch ${cfg.logFile}
        chown ${cfg.user}:${cfg.group} ${cfg.logFile}
        ${lib.optionalString (cfg.fleetKeyFile != null) ''
          if [ -e ${cfg.fleetKeyFile} ]; then
            chown root:${cfg.group} ${cfg.fleetKeyFile}
            chmod 0640 ${cfg.fleetKeyFile}
          else
            echo "lancache: fleetKeyFile ${cfg.fleetKeyFile} does not exist" >&2
          fi
        ''}
      '';

      launchd.daemons.lancache.serviceConfig = {
        ProgramArguments = [ "${cfg.package}/bin/lancache" "serve" ]
          ++ common.serveArgs { inherit cfg stateDir; }
          ++ lib.optionals (cfg.fleetKeyFile != null) [ "--fleet-key" cfg.fleetKeyFile ];
        UserName = cfg.user;
        GroupName = cfg.group;
        WorkingDirectory = stateDir;
        RunAtLoad = true;
        KeepAlive = true;
        ThrottleInterval = 5;
        ProcessType = "Background";
        StandardOutPath = cfg.logFile;
        StandardErrorPath = cfg.logFile;
        SoftResourceLimits.NumberOfFiles = 65536;
      };
    }

    (mkIf cfg.substituter.enable {
      nix.settings.substituters = mkBefore [ (common.substituterURL cfg) ];
    })

    (mkIf (cfg.narinfoCacheNegativeTTL != null) {
      nix.settings.narinfo-cache-negative-ttl = cfg.narinfoCacheNegativeTTL;
    })
  ]);
}
