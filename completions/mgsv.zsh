
#compdef mgsv

_mgsv_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _MGSV_COMPLETE=complete_zsh mgsv)
}

compdef _mgsv_completion mgsv
