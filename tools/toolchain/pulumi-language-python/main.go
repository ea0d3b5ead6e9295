// pulumi-language-python: this project's own Python language host for the Pulumi CLI.
//
// Why it exists: the upstream language host lives in its own Go module
// (github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3), which the Go module
// proxy reachable here does not serve (every version answers 403). Everything it builds on
// IS served as part of github.com/pulumi/pulumi/sdk/v3: the gRPC protocol (proto/go), the
// Python toolchain/virtualenv logic (python/toolchain) and the executor script that really
// runs a program (python/cmd/pulumi-language-python-exec). This host wires those together
// and implements the part of the LanguageRuntime protocol that `pulumi preview/up/destroy`,
// `pulumi about` and `pulumi install` use: Handshake, GetPluginInfo, GetRequiredPackages,
// Run, InstallDependencies, About, GetProgramDependencies and Cancel. Code generation,
// templates, debugging, typecheckers and Python-written plugins (RunPlugin) are not
// implemented and answer "unimplemented".
//
// Protocol (as the CLI expects from any language host): started as
// `pulumi-language-python [-tracing ADDR] ENGINE_ADDRESS`, it serves gRPC on a free loopback
// port, prints that port on stdout and serves until the CLI cancels it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/pulumi/pulumi/sdk/v3/go/common/util/cmdutil"
	"github.com/pulumi/pulumi/sdk/v3/go/common/util/logging"
	"github.com/pulumi/pulumi/sdk/v3/go/common/util/rpcutil"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"github.com/pulumi/pulumi/sdk/v3/python/toolchain"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
)

// version is stamped at build time (-X main.version=...) with the Pulumi release whose
// sdk/v3 module this host is built against.
var version = "dev"

const (
	// The executor script is installed next to this binary by tools/build-toolchain.sh.
	executorName = "pulumi-language-python-exec"
	// The executor exits with 32 after it has already shown the user an actionable message;
	// the CLI must then stop without printing a second, generic error ("bail").
	exitCodeUserActionableMessage = 32
)

// pluginJSONProbe prints, as JSON, the pulumi-plugin.json of every installed Python package
// that declares a resource plugin: the providers the program may need (pulumi-command,
// pulumi-docker, ...) with the versions the installed SDKs ask for.
const pluginJSONProbe = `
import json, importlib.metadata as md
found = []
for dist in md.distributions():
    for f in dist.files or []:
        if f.name != "pulumi-plugin.json":
            continue
        try:
            data = json.loads(f.read_text())
        except Exception:
            continue
        if not data.get("resource"):
            continue
        found.append({
            "name": data.get("name") or dist.metadata["Name"],
            "version": data.get("version") or dist.version,
            "server": data.get("server") or "",
        })
print(json.dumps(found))
`

type languageHost struct {
	pulumirpc.UnimplementedLanguageRuntimeServer

	executor string

	mu            sync.Mutex
	engineAddress string

	cancelCtx  context.Context
	cancelFunc context.CancelFunc
}

func main() {
	// -tracing is passed by the CLI when tracing is on; accepted and ignored here.
	flag.String("tracing", "", "Zipkin-compatible tracing endpoint (ignored)")
	showVersion := flag.Bool("version", false, "print the version and exit")
	givenExecutor := flag.String("use-executor", "", "executor script to use instead of the one next to this binary")
	flag.Parse()

	if *showVersion {
		fmt.Println(version)
		return
	}
	logging.InitLogging(false, 0, false)

	executor := *givenExecutor
	if executor == "" {
		self, err := os.Executable()
		if err != nil {
			cmdutil.Exit(fmt.Errorf("could not determine this executable's path: %w", err))
		}
		executor = filepath.Join(filepath.Dir(self), executorName)
	}
	if _, err := os.Stat(executor); err != nil {
		cmdutil.Exit(fmt.Errorf("missing executor %s (install it next to this binary): %w", executor, err))
	}

	var engineAddress string
	if args := flag.Args(); len(args) > 0 {
		engineAddress = args[0]
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	cancelChannel := make(chan bool)
	go func() {
		<-ctx.Done()
		stop()
		close(cancelChannel)
	}()
	// Exit by ourselves if the engine that started us goes away.
	if engineAddress != "" {
		if err := rpcutil.Healthcheck(ctx, engineAddress, 5*time.Minute, stop); err != nil {
			cmdutil.Exit(fmt.Errorf("could not start the engine health check: %w", err))
		}
	}

	cancelCtx, cancelFunc := context.WithCancel(context.Background())
	host := &languageHost{
		executor:      executor,
		engineAddress: engineAddress,
		cancelCtx:     cancelCtx,
		cancelFunc:    cancelFunc,
	}
	handle, err := rpcutil.ServeWithOptions(rpcutil.ServeOptions{
		Cancel: cancelChannel,
		Init: func(srv *grpc.Server) error {
			pulumirpc.RegisterLanguageRuntimeServer(srv, host)
			return nil
		},
	})
	if err != nil {
		cmdutil.Exit(fmt.Errorf("could not start the language host gRPC server: %w", err))
	}
	// The CLI reads the port from our first line of stdout.
	fmt.Printf("%d\n", handle.Port)
	if err := <-handle.Done; err != nil {
		cmdutil.Exit(fmt.Errorf("language host stopped serving: %w", err))
	}
}

// pythonOptions maps the `runtime.options` of Pulumi.yaml onto the SDK's toolchain options.
func pythonOptions(info *pulumirpc.ProgramInfo) (toolchain.PythonOptions, error) {
	opts := toolchain.PythonOptions{
		Root:       info.GetRootDirectory(),
		ProgramDir: info.GetProgramDirectory(),
	}
	var options map[string]any
	if info.GetOptions() != nil {
		options = info.GetOptions().AsMap()
	}
	if v, ok := options["virtualenv"]; ok {
		s, isString := v.(string)
		if !isString {
			return opts, errors.New("runtime option 'virtualenv' must be a string")
		}
		opts.Virtualenv = s
	}
	if v, ok := options["toolchain"]; ok {
		switch v {
		case "pip":
			opts.Toolchain = toolchain.Pip
		case "poetry":
			opts.Toolchain = toolchain.Poetry
		case "uv":
			opts.Toolchain = toolchain.Uv
		default:
			return opts, fmt.Errorf("unsupported runtime option toolchain=%v (pip, poetry or uv)", v)
		}
	}
	if v, ok := options["typechecker"]; ok && v != "" {
		return opts, fmt.Errorf("runtime option typechecker=%v is not supported by this language host; "+
			"run mypy separately (make lint)", v)
	}
	return opts, nil
}

func resolveToolchain(info *pulumirpc.ProgramInfo) (toolchain.Toolchain, error) {
	if info == nil {
		return nil, errors.New("request carries no program info")
	}
	opts, err := pythonOptions(info)
	if err != nil {
		return nil, err
	}
	return toolchain.ResolveToolchain(opts)
}

func (h *languageHost) Handshake(
	_ context.Context, req *pulumirpc.LanguageHandshakeRequest,
) (*pulumirpc.LanguageHandshakeResponse, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.engineAddress = req.GetEngineAddress()
	return &pulumirpc.LanguageHandshakeResponse{}, nil
}

func (h *languageHost) GetPluginInfo(context.Context, *emptypb.Empty) (*pulumirpc.PluginInfo, error) {
	return &pulumirpc.PluginInfo{Version: version}, nil
}

func (h *languageHost) GetRequiredPackages(
	ctx context.Context, req *pulumirpc.GetRequiredPackagesRequest,
) (*pulumirpc.GetRequiredPackagesResponse, error) {
	tc, err := resolveToolchain(req.GetInfo())
	if err != nil {
		return nil, err
	}
	if err := tc.ValidateVenv(ctx); err != nil {
		return nil, err
	}
	cmd, err := tc.Command(ctx, "-c", pluginJSONProbe)
	if err != nil {
		return nil, err
	}
	out, err := cmd.Output()
	if err != nil {
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			return nil, fmt.Errorf("listing the program's Pulumi packages failed: %w\n%s", err, exitErr.Stderr)
		}
		return nil, fmt.Errorf("listing the program's Pulumi packages failed: %w", err)
	}
	var found []struct {
		Name    string `json:"name"`
		Version string `json:"version"`
		Server  string `json:"server"`
	}
	if err := json.Unmarshal(out, &found); err != nil {
		return nil, fmt.Errorf("unexpected output from the package probe: %w", err)
	}
	packages := make([]*pulumirpc.PackageDependency, 0, len(found))
	for _, p := range found {
		v := p.Version
		if v != "" && v[0] != 'v' {
			v = "v" + v
		}
		packages = append(packages, &pulumirpc.PackageDependency{
			Kind: "resource", Name: p.Name, Version: v, Server: p.Server,
		})
	}
	return &pulumirpc.GetRequiredPackagesResponse{Packages: packages}, nil
}

// runArguments is the executor's command line (the flags pulumi-language-python-exec parses).
func (h *languageHost) runArguments(req *pulumirpc.RunRequest, engineAddress string) []string {
	args := []string{h.executor}
	add := func(flagName, value string) {
		if value != "" {
			args = append(args, "--"+flagName, value)
		}
	}
	add("monitor", req.GetMonitorAddress())
	add("engine", engineAddress)
	add("project", req.GetProject())
	add("root_directory", req.GetInfo().GetRootDirectory())
	add("stack", req.GetStack())
	add("pwd", req.GetPwd())
	add("dry_run", strconv.FormatBool(req.GetDryRun()))
	add("parallel", strconv.Itoa(int(req.GetParallel())))
	add("organization", req.GetOrganization())
	entry := req.GetInfo().GetEntryPoint()
	if entry == "" {
		entry = "."
	}
	args = append(args, entry)
	return append(args, req.GetArgs()...)
}

func (h *languageHost) Run(ctx context.Context, req *pulumirpc.RunRequest) (*pulumirpc.RunResponse, error) {
	if req.GetAttachDebugger() {
		return &pulumirpc.RunResponse{Error: "debugging is not supported by this language host"}, nil
	}
	h.mu.Lock()
	engineAddress := h.engineAddress
	h.mu.Unlock()

	tc, err := resolveToolchain(req.GetInfo())
	if err != nil {
		return nil, err
	}
	if err := tc.ValidateVenv(ctx); err != nil {
		return nil, err
	}

	// The executor reads the stack configuration from these two variables.
	config, err := json.Marshal(req.GetConfig())
	if err != nil {
		return nil, fmt.Errorf("serializing the configuration: %w", err)
	}
	secretKeys := req.GetConfigSecretKeys()
	if secretKeys == nil {
		secretKeys = []string{}
	}
	secretKeysJSON, err := json.Marshal(secretKeys)
	if err != nil {
		return nil, fmt.Errorf("serializing the secret configuration keys: %w", err)
	}

	// Stop the program if the CLI sends Cancel or abandons the request.
	runCtx, runCancel := context.WithCancel(h.cancelCtx)
	defer runCancel()
	context.AfterFunc(ctx, runCancel)

	cmd, err := tc.Command(runCtx, h.runArguments(req, engineAddress)...)
	if err != nil {
		return nil, err
	}
	cmd.Cancel = func() error {
		if err := cmd.Process.Signal(os.Interrupt); err != nil {
			return cmd.Process.Kill()
		}
		return nil
	}
	cmd.WaitDelay = 5 * time.Second
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stderr
	env := cmd.Env
	if env == nil {
		env = os.Environ()
	}
	cmd.Env = append(env,
		"PULUMI_CONFIG="+string(config),
		"PULUMI_CONFIG_SECRET_KEYS="+string(secretKeysJSON),
	)

	if err := cmd.Run(); err != nil {
		// Python may die before flushing; make sure what it wrote reaches the CLI first.
		_ = os.Stdout.Sync()
		_ = os.Stderr.Sync()
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.ExitStatus() == exitCodeUserActionableMessage {
				return &pulumirpc.RunResponse{Bail: true}, nil
			}
			return &pulumirpc.RunResponse{
				Error: fmt.Sprintf("program exited with non-zero exit code: %d", exitErr.ExitCode()),
			}, nil
		}
		return &pulumirpc.RunResponse{
			Error: fmt.Sprintf("could not run the language executor %s: %v", h.executor, err),
		}, nil
	}
	return &pulumirpc.RunResponse{}, nil
}

// streamWriter forwards the toolchain's output to the CLI over the InstallDependencies stream.
type streamWriter struct {
	server pulumirpc.LanguageRuntime_InstallDependenciesServer
	stderr bool
}

func (w streamWriter) Write(p []byte) (int, error) {
	chunk := append([]byte(nil), p...)
	resp := &pulumirpc.InstallDependenciesResponse{Stdout: chunk}
	if w.stderr {
		resp = &pulumirpc.InstallDependenciesResponse{Stderr: chunk}
	}
	if err := w.server.Send(resp); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (h *languageHost) InstallDependencies(
	req *pulumirpc.InstallDependenciesRequest, server pulumirpc.LanguageRuntime_InstallDependenciesServer,
) error {
	tc, err := resolveToolchain(req.GetInfo())
	if err != nil {
		return err
	}
	var stdout, stderr io.Writer = streamWriter{server: server}, streamWriter{server: server, stderr: true}
	return tc.InstallDependencies(server.Context(), req.GetInfo().GetProgramDirectory(),
		false /* useLanguageVersionTools */, true /* showOutput */, stdout, stderr)
}

func (h *languageHost) About(ctx context.Context, req *pulumirpc.AboutRequest) (*pulumirpc.AboutResponse, error) {
	tc, err := resolveToolchain(req.GetInfo())
	if err != nil {
		return nil, err
	}
	info, err := tc.About(ctx)
	if err != nil {
		return nil, err
	}
	return &pulumirpc.AboutResponse{
		Executable: info.PythonExecutable,
		Version:    info.PythonVersion.String(),
		Metadata:   map[string]string{"languageHost": "vllm-cluster toolchain build " + version},
	}, nil
}

func (h *languageHost) GetProgramDependencies(
	ctx context.Context, req *pulumirpc.GetProgramDependenciesRequest,
) (*pulumirpc.GetProgramDependenciesResponse, error) {
	tc, err := resolveToolchain(req.GetInfo())
	if err != nil {
		return nil, err
	}
	deps, err := tc.ListPackages(ctx, req.GetTransitiveDependencies())
	if err != nil {
		return nil, err
	}
	result := make([]*pulumirpc.DependencyInfo, 0, len(deps))
	for _, d := range deps {
		result = append(result, &pulumirpc.DependencyInfo{Name: d.Name, Version: d.Version})
	}
	return &pulumirpc.GetProgramDependenciesResponse{Dependencies: result}, nil
}

func (h *languageHost) Cancel(context.Context, *emptypb.Empty) (*emptypb.Empty, error) {
	h.cancelFunc()
	return &emptypb.Empty{}, nil
}
