
_vhctl_completion() {
    local IFS=$'
'
    COMPREPLY=( $( env COMP_WORDS="${COMP_WORDS[*]}" \
                   COMP_CWORD=$COMP_CWORD \
                   _VHCTL_COMPLETE=complete_bash $1 ) )
    return 0
}

complete -o default -F _vhctl_completion vhctl

