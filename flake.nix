{
  description = "lancache: a LAN-first peer cache for Nix";

  # No flake.lock is committed from the build machine (it has no access to
  # GitHub); the first `nix build` or `nix flake lock` writes one.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
      forAllSystems = f: builtins.listToAttrs (map (system: { name = system; value = f system; }) systems);

      # The version compiled into the source (var Version in node.go).
      version = builtins.head (builtins.match ".*\nvar Version = \"([^\"]+)\".*" (builtins.readFile ./node.go));

      # vendorHash is the NAR hash of `go mod vendor` for the current go.mod/go.sum.
      # It changes whenever a dependency does; packaging's tests recompute it
      # (TestFlakeVendorHash, `cd packaging && go test -run VendorHash .`) and
      # print the value to put here. If in doubt, set lib.fakeHash and take the
      # "got:" value from the failing `nix build`.
      vendorHash = "sha256-mLCcf9XTSAVql4flpj9FW9mJke83RIm1i/XI1R85sEw=";

      # go.mod requires Go >= 1.26.
      lancacheFor = pkgs:
        let buildGoModule = pkgs.buildGo126Module or pkgs.buildGoModule;
        in buildGoModule {
          pname = "lancache";
          inherit version vendorHash;
          src = self;
          subPackages = [ "cmd/lancache" ];
          env.CGO_ENABLED = "0";
          ldflags = [ "-s" "-w" "-X github.com/lancache/lancache.Version=${version}" ];
          # The project's CI runs the tests (they need a Nix store, network
          # namespaces and loopback sockets, which the build sandbox lacks).
          doCheck = false;
          meta = {
            description = "LAN-first peer cache for Nix: an HTTP substituter backed by LAN peers over QUIC";
            homepage = "https://github.com/lancache/lancache";
            mainProgram = "lancache";
            platforms = systems;
          };
        };
    in
    {
      packages = forAllSystems (system:
        let lancache = lancacheFor nixpkgs.legacyPackages.${system};
        in { inherit lancache; default = lancache; });

      overlays.default = final: prev: { lancache = lancacheFor final; };

      nixosModules.default = { pkgs, lib, ... }: {
        imports = [ ./packaging/nixos/module.nix ];
        services.lancache.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.lancache;
      };

      darwinModules.default = { pkgs, lib, ... }: {
        imports = [ ./packaging/darwin/module.nix ];
        services.lancache.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.lancache;
      };

      devShells = forAllSystems (system:
        let pkgs = nixpkgs.legacyPackages.${system};
        in {
          default = pkgs.mkShell {
            packages = [ (pkgs.go_1_26 or pkgs.go) pkgs.gopls pkgs.gotools pkgs.xz pkgs.zstd pkgs.bzip2 ]
              ++ nixpkgs.lib.optionals pkgs.stdenv.isLinux [ pkgs.dpkg pkgs.iproute2 ];
            env.CGO_ENABLED = "0";
          };
        });
    };
}
