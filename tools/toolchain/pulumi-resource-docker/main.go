// pulumi-resource-docker: the Pulumi Docker provider, rebuilt by this project from Go modules
// that the module proxy here serves.
//
// Why it exists: the upstream provider module (github.com/pulumi/pulumi-docker/provider/v5)
// is not served by the Go module proxy reachable here (every version answers 403). The parts
// that pulumi-docker is made of are served: the Terraform Docker provider it bridges
// (github.com/kreuzwerker/terraform-provider-docker, module path
// github.com/terraform-providers/terraform-provider-docker), Pulumi's Terraform bridge
// (github.com/pulumi/pulumi-terraform-bridge/v3) and Pulumi's fork of terraform-plugin-sdk.
// This program bridges that same Terraform provider with the tokens and names that the
// pulumi-docker Python SDK (requirements.txt) sends, so `pulumi_docker.Container`,
// `RemoteImage`, `Network`, `Volume`, ... reach real Terraform Docker code.
//
// Not included: pulumi-docker's native `docker.Image` build resource (Go code that lives
// only in the upstream module); using it fails with "unknown resource type".
//
// Two modes:
//
//	pulumi-resource-docker --emit-schema   print the generated Pulumi schema (build step)
//	pulumi-resource-docker [engine flags]  serve the provider to the Pulumi engine
package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"os"
	"unicode"

	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfbridge"
	bridgetokens "github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfbridge/tokens"
	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfgen"
	shimv2 "github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfshim/sdk-v2"
	"github.com/pulumi/pulumi/sdk/v3/go/common/diag"
	"github.com/pulumi/pulumi/sdk/v3/go/common/diag/colors"
	"github.com/pulumi/pulumi/sdk/v3/go/common/tokens"

	tfdocker "github.com/terraform-providers/terraform-provider-docker/shim"
)

// version is stamped at build time (-X main.version=5.2.0): the pulumi-docker SDK version
// this build serves.
var version = "0.0.0-dev"

// schemaJSON is the output of --emit-schema from the first build stage, embedded by the
// second (tools/build-toolchain.sh). GetSchema serves it; resource CRUD does not need it.
//
//go:embed schema.json
var schemaJSON []byte

const pkg = "docker"

// Resource and data source names that differ from the bridge's standard
// docker_<name> -> docker:index/<name>:<Name> mapping, as the Python SDK names them.
var resourceTokens = map[string]string{
	"docker_config": "ServiceConfig",
	"docker_image":  "RemoteImage",
}

var dataSourceTokens = map[string]string{
	"docker_image": "getRemoteImage",
}

func resourceToken(name string) tokens.Type {
	lower := string(unicode.ToLower(rune(name[0]))) + name[1:]
	return tokens.Type(pkg + ":index/" + lower + ":" + name)
}

func functionToken(name string) tokens.ModuleMember {
	return tokens.ModuleMember(pkg + ":index/" + name + ":" + name)
}

func providerInfo() tfbridge.ProviderInfo {
	info := tfbridge.ProviderInfo{
		P:       shimv2.NewProvider(tfdocker.NewProvider(version)),
		Name:    pkg,
		Version: version,
		Config: map[string]*tfbridge.SchemaInfo{
			// Like the docker CLI: DOCKER_HOST, else the local socket.
			"host": {
				Default: &tfbridge.DefaultInfo{
					EnvVars: []string{"DOCKER_HOST"},
					ComputeDefault: func(context.Context, tfbridge.ComputeDefaultOptions) (interface{}, error) {
						return "unix:///var/run/docker.sock", nil
					},
				},
			},
			// The SDK exposes this set as `registry_auth` (a list), not a pluralized name.
			"registry_auth": {Name: "registryAuth", MaxItemsOne: tfbridge.False()},
		},
		Resources: map[string]*tfbridge.ResourceInfo{
			"docker_container": {
				// Named containers cannot exist twice: replace by delete-then-create.
				DeleteBeforeReplace: true,
				Fields: map[string]*tfbridge.SchemaInfo{
					// Keep the SDK's names (the bridge would pluralize these lists).
					"command":           {Name: "command"},
					"networks_advanced": {Name: "networksAdvanced"},
				},
			},
			"docker_image": {Fields: map[string]*tfbridge.SchemaInfo{"name": {Name: "name"}}},
		},
		DataSources: map[string]*tfbridge.DataSourceInfo{},
	}
	for tf, name := range resourceTokens {
		r, ok := info.Resources[tf]
		if !ok {
			r = &tfbridge.ResourceInfo{}
			info.Resources[tf] = r
		}
		r.Tok = resourceToken(name)
	}
	for tf, name := range dataSourceTokens {
		info.DataSources[tf] = &tfbridge.DataSourceInfo{Tok: functionToken(name)}
	}
	// Everything else: docker_<snake> -> docker:index/<camel>:<Pascal> (resources) and
	// docker:index/get<Pascal>:get<Pascal> (data sources).
	info.MustComputeTokens(bridgetokens.SingleModule("docker_", "index", bridgetokens.MakeStandard(pkg)))
	// Unnamed containers/networks/volumes get "<resource name>-<random>" like upstream.
	info.SetAutonaming(255, "-")
	return info
}

func main() {
	if len(os.Args) == 2 && os.Args[1] == "--emit-schema" {
		info := providerInfo()
		// The Terraform provider's docs/ (from its module) give the schema its descriptions.
		info.UpstreamRepoPath = os.Getenv("TF_DOCKER_SOURCE_DIR")
		sink := diag.DefaultSink(os.Stderr, os.Stderr, diag.FormatOptions{Color: colors.Never})
		spec, err := tfgen.GenerateSchema(info, sink)
		if err != nil {
			fmt.Fprintf(os.Stderr, "generating the schema failed: %v\n", err)
			os.Exit(1)
		}
		out, err := json.MarshalIndent(spec, "", "  ")
		if err != nil {
			fmt.Fprintf(os.Stderr, "encoding the schema failed: %v\n", err)
			os.Exit(1)
		}
		fmt.Println(string(out))
		return
	}
	tfbridge.Main(pkg, version, providerInfo(), schemaJSON)
}
