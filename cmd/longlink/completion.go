package main

import (
	"fmt"
	"os"
	"sort"
	"strings"
)

const completionSummary = "print a shell completion script (bash or zsh): eval \"$(longlink completion bash)\""

func init() {
	register(command{name: "completion", summary: completionSummary, run: runCompletion, noFlags: true})
}

// The script completes subcommands from the list below and flags by asking
// the binary itself (`longlink <cmd> -h`), so it never goes stale.
const bashCompletion = `# longlink bash completion: eval "$(longlink completion bash)"
_longlink() {
  local cur=${COMP_WORDS[COMP_CWORD]}
  if [ "$COMP_CWORD" -eq 1 ]; then
    COMPREPLY=($(compgen -W "%s" -- "$cur"))
    return
  fi
  if [[ $cur == -* ]]; then
    local flags
    flags=$(longlink "${COMP_WORDS[1]}" -h 2>/dev/null | grep -oE '^  -[a-z0-9-]+' | sed 's/^  //')
    COMPREPLY=($(compgen -W "$flags" -- "$cur"))
    return
  fi
  COMPREPLY=($(compgen -f -- "$cur"))
}
complete -F _longlink longlink
`

func runCompletion(args []string) int {
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	shell := "bash"
	if len(args) > 0 {
		shell = args[0]
	}
	switch shell {
	case "bash":
		fmt.Printf(bashCompletion, strings.Join(names, " "))
	case "zsh":
		fmt.Print("autoload -U +X bashcompinit && bashcompinit\n")
		fmt.Printf(bashCompletion, strings.Join(names, " "))
	default:
		fmt.Fprintf(os.Stderr, "longlink completion: unknown shell %q (bash or zsh)\n", shell)
		return 2
	}
	return 0
}
