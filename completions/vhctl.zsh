
#compdef vhctl

_vhctl_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _VHCTL_COMPLETE=complete_zsh vhctl)
}

compdef _vhctl_completion vhctl

