package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common"
	"cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/cost"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
	"cel.dev/cel-go/interpreter"

	"github.com/usltun/usltun/flow"
)

// The flow attributes a match sees. Dotted names are CEL qualified
// identifiers: `dst.addr` type-checks, `dst.foo` is an undeclared
// reference.
const (
	varProto   = "proto"
	varDstAddr = "dst.addr"
	varDstPort = "dst.port"
	varDstName = "dst.name"
	fnInPrefix = "in_prefix"
)

var celTrue ref.Val = types.True

func newEnv() (*cel.Env, error) {
	return cel.NewEnv(
		cel.Variable(varProto, cel.StringType),
		cel.Variable(varDstAddr, cel.StringType),
		cel.Variable(varDstPort, cel.IntType),
		cel.Variable(varDstName, cel.StringType),
		cel.Function(fnInPrefix,
			cel.Overload("in_prefix_string_string",
				[]*cel.Type{cel.StringType, cel.StringType}, cel.BoolType,
				cel.BinaryBinding(inPrefix)),
			cel.Overload("in_prefix_string_list_string",
				[]*cel.Type{cel.StringType, cel.ListType(cel.StringType)}, cel.BoolType,
				cel.BinaryBinding(inPrefixList)),
		),
		cel.ASTValidators(prefixLiterals{}),
		cel.ParserExpressionSizeLimit(MaxMatchLen),
	)
}

// compileMatch parses, type-checks and plans one match expression.
func (e *Engine) compileMatch(match string) (cel.Program, error) {
	if strings.TrimSpace(match) == "" {
		return nil, errors.New("match: empty (write true to match every flow)")
	}
	a, iss := e.env.CompileSource(common.NewStringSource(match, "match"))
	if err := iss.Err(); err != nil {
		return nil, celIssues(iss)
	}
	if t := a.OutputType(); !t.IsExactType(cel.BoolType) {
		return nil, fmt.Errorf("match: is of type %s, want bool", t)
	}
	est, err := e.env.EstimateCost(a, sizes{})
	if err != nil {
		return nil, fmt.Errorf("match: estimating its cost: %w", err)
	}
	if est.Max > e.cfg.CostLimit {
		return nil, fmt.Errorf("match: may cost up to %d, over the limit of %d per flow", est.Max, e.cfg.CostLimit)
	}
	// The cost limit is enforced here, on CEL's worst-case estimate, and not
	// again at run time: run-time cost tracking allocates on every
	// operation and more than doubles a flow open (9.7 against 4.1 µs, 93
	// against 13 allocations, with 20 rules), for a bound the estimate
	// already gives (TestCostEstimateBoundsEvaluation). OptOptimize folds
	// constants and compiles constant regular expressions once, here.
	p, err := e.env.Program(a, cel.EvalOptions(cel.OptOptimize))
	if err != nil {
		return nil, fmt.Errorf("match: %w", err)
	}
	return p, nil
}

// celIssues turns CEL's errors into one line each, "match:LINE:COL: what".
func celIssues(iss *cel.Issues) error {
	var errs []error
	for _, e := range iss.Errors() {
		if e.Location.Line() < 1 { // about the whole expression (its size)
			errs = append(errs, fmt.Errorf("match: %s", e.Message))
			continue
		}
		errs = append(errs, fmt.Errorf("match:%d:%d: %s", e.Location.Line(), e.Location.Column()+1, e.Message))
	}
	return errors.Join(errs...)
}

// activation gives a program the flow's attributes without building a map;
// the values are CEL values already, converted once per Evaluate.
type activation struct {
	proto, addr, port, name ref.Val
}

func newActivation(d flow.Dest) *activation {
	a := &activation{
		proto: types.String(d.Proto.String()),
		addr:  types.String(""),
		port:  types.Int(d.Port()),
		name:  types.String(d.Name),
	}
	if d.Name == "" && d.Addr.Addr().IsValid() {
		a.addr = types.String(d.Addr.Addr().Unmap().String())
	}
	return a
}

func (a *activation) ResolveName(name string) (any, bool) {
	switch name {
	case varProto:
		return a.proto, true
	case varDstAddr:
		return a.addr, true
	case varDstPort:
		return a.port, true
	case varDstName:
		return a.name, true
	}
	return nil, false
}

func (a *activation) Parent() interpreter.Activation { return nil }

// inPrefix is in_prefix(addr, prefix).
func inPrefix(addr, prefix ref.Val) ref.Val {
	ip, err := netip.ParseAddr(string(addr.(types.String)))
	if err != nil {
		return types.False
	}
	return prefixContains(prefix, ip.Unmap())
}

// inPrefixList is in_prefix(addr, [prefix, ...]).
func inPrefixList(addr, prefixes ref.Val) ref.Val {
	ip, err := netip.ParseAddr(string(addr.(types.String)))
	if err != nil {
		return types.False
	}
	ip = ip.Unmap()
	for it := prefixes.(traits.Lister).Iterator(); it.HasNext() == types.True; {
		if v := prefixContains(it.Next(), ip); v != types.False {
			return v // true, or an error
		}
	}
	return types.False
}

func prefixContains(prefix ref.Val, ip netip.Addr) ref.Val {
	s, ok := prefix.(types.String)
	if !ok {
		return types.MaybeNoSuchOverloadErr(prefix)
	}
	p, err := netip.ParsePrefix(string(s))
	if err != nil {
		return types.NewErr("in_prefix: %v", err)
	}
	return types.Bool(p.Contains(ip))
}

// prefixLiterals rejects, at Set, an in_prefix whose prefix is a literal
// that is not a prefix, pointing at the literal.
type prefixLiterals struct{}

func (prefixLiterals) Name() string { return "usltun.in_prefix_literals" }

func (prefixLiterals) Validate(_ *cel.Env, _ cel.ValidatorConfig, a *ast.AST, iss *cel.Issues) {
	for _, call := range ast.MatchDescendants(ast.NavigateAST(a), ast.FunctionMatcher(fnInPrefix)) {
		args := call.AsCall().Args()
		if len(args) != 2 {
			continue
		}
		lits := []ast.Expr{args[1]}
		if args[1].Kind() == ast.ListKind {
			lits = args[1].AsList().Elements()
		}
		for _, lit := range lits {
			if lit.Kind() != ast.LiteralKind {
				continue
			}
			s, ok := lit.AsLiteral().(types.String)
			if !ok {
				continue
			}
			if _, err := netip.ParsePrefix(string(s)); err != nil {
				iss.ReportErrorAtID(lit.ID(), "in_prefix: %v", err)
			}
		}
	}
}

// sizes tells CEL's cost estimator how long the flow's strings can be, so a
// match's worst-case cost is finite and can be held against the limit.
type sizes struct{}

func (sizes) EstimateSize(n cost.AstNode) *cost.SizeEstimate {
	path := n.Path()
	if len(path) != 1 {
		return nil
	}
	var max uint64
	switch path[0] {
	case varProto:
		max = uint64(len("icmp"))
	case varDstAddr:
		max = uint64(len("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))
	case varDstName:
		max = flow.MaxName
	default:
		return nil
	}
	return &cost.SizeEstimate{Min: 0, Max: max}
}

func (sizes) EstimateCallCost(function, overload string, _ *cost.AstNode, args []cost.AstNode) *cost.CallEstimate {
	if function != fnInPrefix {
		return nil
	}
	// Two parses and a comparison per prefix: about as much as a short
	// string comparison each. A literal list has a known size.
	n := uint64(1)
	if overload == "in_prefix_string_list_string" && len(args) == 2 {
		if s := args[1].ComputedSize(); s != nil {
			n = max(s.Max, 1)
		} else {
			n = MaxRules // a list not written out: bounded by nothing we know
		}
	}
	return &cost.CallEstimate{CostEstimate: cost.CostEstimate{Min: 1, Max: 2 * n}}
}
