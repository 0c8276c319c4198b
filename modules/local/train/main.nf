process TRAIN {
    tag "all tomograms"
    label 'process_gpu'

    input:
    path tomograms, stageAs: 'data/*'
    path masks, stageAs: 'masks/*'
    path picks, stageAs: 'picks/*'
    path checkpoint, stageAs: 'start/*'
    val settings

    output:
    path "finetuned.ckpt", emit: checkpoint
    tuple val("${task.process}"), eval('subtomo-embed --version'), emit: versions  // main.nf collects them

    script:
    def args = task.ext.args ?: ''
    // self-supervised fine-tuning of the starting checkpoint on the staged tomograms' particles
    // (subtomo-embed train --from-data, docs/training.md). The settings name their source: the instance
    // masks staged as masks/ (instances_mask_folder=masks; picks is []) or the picks staged as picks/
    // (centers_file=picks or picks/<file>, instances_mask_folder=null; masks is []).
    // finetuned.ckpt has no optimizer state.
    // One image serves both: the GPU when the task was given one (the gpu profile), else the CPU.
    def device = task.accelerator ? 'cuda' : 'cpu'
    """
    subtomo-train \\
        --from-data \\
        --from ${checkpoint} \\
        --set 'data_folder=data' \\
        --output training/last.ckpt \\
        --export finetuned.ckpt \\
        --device ${device} \\
        ${settings} \\
        ${args}
    """

    stub:
    """
    touch finetuned.ckpt
    """
}
