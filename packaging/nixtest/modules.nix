# A small evaluator for NixOS-style modules on top of ./stub-lib.nix: it
# fills the module's declared options from user settings and defaults
# (type-checking each value), calls the module, and resolves mkIf / mkMerge /
# mkOverride / mkOrder in the config it returns, merged with the definitions
# other modules would make (`base`). It checks the shape and logic of a
# module, not nixpkgs' real option merging.
{ lib }:

let
  isOption = v: builtins.isAttrs v && (v._type or null) == "option";

  # Fill an option tree from user values; every leaf must type-check.
  fill = path: opts: user:
    builtins.mapAttrs
      (name: opt:
        let p = "${path}.${name}"; in
        if isOption opt then
          let
            v = if user ? ${name} then user.${name}
              else if opt ? default then opt.default
              else throw "option ${p} has no value and no default";
          in
          if opt ? type && !(opt.type.check v)
          then throw "option ${p}: value ${builtins.toJSON v} is not of type ${opt.type.name}"
          else v
        else fill p opt (user.${name} or { }))
      opts;

  # Declared options whose user values do not exist catch typos.
  checkUnknown = path: opts: user:
    builtins.all
      (name:
        if !(opts ? ${name}) then throw "option ${path}.${name} does not exist"
        else if isOption opts.${name} then true
        else checkUnknown "${path}.${name}" opts.${name} user.${name})
      (builtins.attrNames user);

  # Definitions are resolved to a tree whose leaves are
  #   { _def = true; prio; order; value; }
  # so that merging can honour priorities and list order.
  leaf = prio: order: value: { _def = true; inherit prio order value; };

  resolve = prio: order: v:
    if builtins.isAttrs v && v ? _type then
      if v._type == "if" then (if v.condition then resolve prio order v.content else { })
      else if v._type == "merge" then builtins.foldl' merge { } (map (resolve prio order) v.contents)
      else if v._type == "override" then resolve v.priority order v.content
      else if v._type == "order" then resolve prio v.priority v.content
      else leaf prio order v
    else if builtins.isAttrs v && !(v ? _def) && (v.type or null) != "derivation" then
      builtins.mapAttrs (_: resolve prio order) v
    else leaf prio order v;

  isLeaf = v: builtins.isAttrs v && v ? _def;

  merge = a: b:
    if a == { } then b
    else if b == { } then a
    else if isLeaf a && isLeaf b then
      if builtins.isList a.value && builtins.isList b.value then
        # Lists concatenate; mkBefore/mkAfter order them; the lower priority
        # number wins outright, as in nixpkgs.
        if a.prio != b.prio then (if a.prio < b.prio then a else b)
        else leaf a.prio 1000 (
          if a.order <= b.order then a.value ++ b.value else b.value ++ a.value)
      else if a.prio != b.prio then (if a.prio < b.prio then a else b)
      else if a.value == b.value then a
      else throw "conflicting definitions: ${builtins.toJSON a.value} and ${builtins.toJSON b.value}"
    else if isLeaf a || isLeaf b then throw "cannot merge an attribute set with a value"
    else
      builtins.foldl'
        (acc: name: acc // { ${name} = if acc ? ${name} then merge acc.${name} b.${name} else b.${name}; })
        a
        (builtins.attrNames b);

  strip = v: if isLeaf v then v.value else builtins.mapAttrs (_: strip) v;
in
{
  # evalModule { module; user; base; baseConfig; pkgs; }: `user` sets
  # services.lancache, `base` is what other modules define (merged with the
  # module's output), `baseConfig` the rest of `config` the module reads.
  # Returns { cfg = filled options; config = resolved definitions; }.
  evalModule = { module, user, base ? { }, baseConfig ? { }, pkgs ? { } }:
    let
      self = module { inherit lib pkgs config; };
      opts = self.options.services.lancache;
      cfg = assert checkUnknown "services.lancache" opts user; fill "services.lancache" opts user;
      config = baseConfig // { services = (baseConfig.services or { }) // { lancache = cfg; }; };
      defs = merge (resolve 100 1000 base) (resolve 100 1000 self.config);
    in
    { inherit cfg; config = strip defs; };
}
